package revoke

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
)

// findAccessors lists every token accessor and looks each up with a small
// worker pool, returning the accessors of the tokens that belong to one of
// mounts and whose metadata matches. Vault's accessor list is not paged by
// the API; the cost is one LIST and one lookup per token, bounded by workers
// and by ctx's deadline (the broker's delivery timeout).
func (r *revoker) findAccessors(ctx context.Context, mounts []string, match func(map[string]string) bool, workers int) ([]string, int, error) {
	const listPath = "auth/token/accessors"
	secret, err := r.vault.Logical().ListWithContext(ctx, listPath)
	if err != nil {
		return nil, 0, vaultError(err, "list+sudo", listPath)
	}
	keys := stringKeys(secret)
	// Never revoke the step's own token (serviceaccount mode on the step's
	// own account would otherwise cut the branch it sits on).
	self := ""
	if s, err := r.vault.Auth().Token().LookupSelfWithContext(ctx); err == nil && s != nil {
		self, _ = s.Data["accessor"].(string)
	}
	var mu sync.Mutex
	var found []string
	err = forEach(ctx, keys, workers, func(ctx context.Context, accessor string) error {
		if accessor == self {
			return nil
		}
		const lookupPath = "auth/token/lookup-accessor"
		s, err := r.vault.Logical().WriteWithContext(ctx, lookupPath, map[string]any{"accessor": accessor})
		if err != nil {
			if invalidAccessor(err) {
				return nil // expired or revoked since the list
			}
			return vaultError(err, "update", lookupPath)
		}
		if s == nil || !underMount(s.Data["path"], mounts) || !match(stringMap(s.Data["meta"])) {
			return nil
		}
		mu.Lock()
		found = append(found, accessor)
		mu.Unlock()
		return nil
	})
	return found, len(keys), err
}

// listLeases returns the lease ids under each prefix (recursively). No
// prefixes means every lease outside auth/: tokens are revoked by accessor,
// their own leases are not the dynamic secrets the step reports.
func (r *revoker) listLeases(ctx context.Context, prefixes []string) ([]string, error) {
	var out []string
	var walk func(dir string) error
	walk = func(dir string) error {
		path := "sys/leases/lookup/" + dir
		s, err := r.vault.Logical().ListWithContext(ctx, path)
		if err != nil {
			return vaultError(err, "list+sudo", path)
		}
		for _, k := range stringKeys(s) {
			switch {
			case dir == "" && k == "auth/":
			case strings.HasSuffix(k, "/"):
				if err := walk(dir + k); err != nil {
					return err
				}
			default:
				out = append(out, dir+k)
			}
		}
		return nil
	}
	if len(prefixes) == 0 {
		prefixes = []string{""}
	}
	for _, p := range prefixes {
		p = strings.TrimPrefix(p, "/")
		if p != "" && !strings.HasSuffix(p, "/") {
			p += "/"
		}
		if err := walk(p); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// childLeases sorts the leases that existed before the revocation: gone
// ones were revoked already; ones Vault now lists as expiring no later than
// the revocation were the revoked tokens' and are pending. The rest belong
// to others and are left alone.
func (r *revoker) childLeases(ctx context.Context, before []string, revokedAt time.Time, workers int) (pending []string, gone int, err error) {
	var mu sync.Mutex
	err = forEach(ctx, before, workers, func(ctx context.Context, id string) error {
		expire, exists, err := r.lookupLease(ctx, id)
		if err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		switch {
		case !exists:
			gone++
		case !expire.After(revokedAt.Add(time.Second)):
			pending = append(pending, id)
		}
		return nil
	})
	return pending, gone, err
}

// waitGone polls the pending leases until Vault reports them all gone or
// wait passes; it returns the ones left.
func (r *revoker) waitGone(ctx context.Context, pending []string, wait time.Duration, workers int) ([]string, error) {
	deadline := time.Now().Add(wait)
	interval := 10 * time.Millisecond
	for len(pending) > 0 {
		var mu sync.Mutex
		var left []string
		err := forEach(ctx, pending, workers, func(ctx context.Context, id string) error {
			_, exists, err := r.lookupLease(ctx, id)
			if err == nil && exists {
				mu.Lock()
				left = append(left, id)
				mu.Unlock()
			}
			return err
		})
		if err != nil {
			return pending, err
		}
		pending = left
		if len(pending) == 0 || time.Now().After(deadline) {
			break
		}
		if err := sleep(ctx, interval); err != nil {
			return pending, err
		}
		interval = min(2*interval, 200*time.Millisecond)
	}
	return pending, nil
}

func (r *revoker) lookupLease(ctx context.Context, id string) (expire time.Time, exists bool, err error) {
	const path = "sys/leases/lookup"
	s, err := r.vault.Logical().WriteWithContext(ctx, path, map[string]any{"lease_id": id})
	if err != nil {
		var re *vaultapi.ResponseError
		if errors.As(err, &re) && re.StatusCode == http.StatusBadRequest && strings.Contains(strings.Join(re.Errors, " "), "invalid lease") {
			return time.Time{}, false, nil
		}
		return time.Time{}, false, vaultError(err, "update", path)
	}
	if s == nil {
		return time.Time{}, false, nil
	}
	text, _ := s.Data["expire_time"].(string)
	expire, err = time.Parse(time.RFC3339Nano, text)
	if err != nil {
		// A lease without expiry is not one a revocation marked.
		return time.Time{}.AddDate(9999, 0, 0), true, nil
	}
	return expire, true, nil
}

// forEach runs fn on every item with at most workers at a time and returns
// the first error (cancelling the rest).
func forEach(ctx context.Context, items []string, workers int, fn func(context.Context, string) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	jobs := make(chan string)
	var wg sync.WaitGroup
	for range min(workers, max(len(items), 1)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for it := range jobs {
				if err := fn(ctx, it); err != nil {
					cancel(err)
				}
			}
		}()
	}
feed:
	for _, it := range items {
		select {
		case jobs <- it:
		case <-ctx.Done():
			break feed
		}
	}
	close(jobs)
	wg.Wait()
	// nil unless a worker failed (its error) or the caller gave up (ctx's).
	return context.Cause(ctx)
}

// vaultError turns a failed Vault call into a permanent failure (permission
// denied: a retry cannot help) or a retryable error (unreachable, sealed,
// overloaded), naming the path and the capability it needs.
func vaultError(err error, capability, path string) error {
	var re *vaultapi.ResponseError
	if errors.As(err, &re) {
		switch {
		case re.StatusCode == http.StatusForbidden:
			return failf("Vault denied the step %s on %s (403 permission denied): its token needs capability %q on path %q (see functions/revoke/policy.hcl), or it has expired", capability, path, capability, path)
		case re.StatusCode == http.StatusServiceUnavailable:
			return fmt.Errorf("Vault is sealed or unavailable (503 on %s): unseal it or wait for a leader; the broker retries: %s", path, strings.Join(re.Errors, "; "))
		}
		return fmt.Errorf("Vault %s on %s answered %d: %s", capability, path, re.StatusCode, strings.Join(re.Errors, "; "))
	}
	return fmt.Errorf("reaching Vault for %s on %s (check VAULT_ADDR and the network; the broker retries): %w", capability, path, err)
}

func invalidAccessor(err error) bool {
	var re *vaultapi.ResponseError
	return errors.As(err, &re) && re.StatusCode == http.StatusBadRequest &&
		strings.Contains(strings.Join(re.Errors, " "), "invalid accessor")
}

func stringKeys(s *vaultapi.Secret) []string {
	if s == nil {
		return nil
	}
	raw, _ := s.Data["keys"].([]any)
	out := make([]string, 0, len(raw))
	for _, k := range raw {
		if str, ok := k.(string); ok {
			out = append(out, str)
		}
	}
	return out
}

func stringMap(v any) map[string]string {
	m, _ := v.(map[string]any)
	out := make(map[string]string, len(m))
	for k, v := range m {
		if s, ok := v.(string); ok {
			out[k] = s
		}
	}
	return out
}

func underMount(path any, mounts []string) bool {
	p, _ := path.(string)
	for _, m := range mounts {
		m = strings.TrimPrefix(m, "/")
		if !strings.HasSuffix(m, "/") {
			m += "/"
		}
		if strings.HasPrefix(p, m) {
			return true
		}
	}
	return false
}
