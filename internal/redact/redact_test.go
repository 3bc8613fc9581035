package redact

import (
	"slices"
	"strings"
	"testing"
)

func TestArgs(t *testing.T) {
	h := Value
	for _, c := range []struct {
		in, want []string
	}{
		{[]string{"app", "--token=s3cr3t", "-v"}, []string{"app", "--token=" + h("s3cr3t"), "-v"}},
		{[]string{"app", "--password", "hunter2", "x"}, []string{"app", "--password", h("hunter2"), "x"}},
		{[]string{"app", "--client-secret", "--verbose"}, []string{"app", "--client-secret", "--verbose"}},
		{[]string{"env", "API_KEY=abc", "DB_Password=p", "HOME=/root"}, []string{"env", "API_KEY=" + h("abc"), "DB_Password=" + h("p"), "HOME=/root"}},
		{[]string{"curl", "-H", "Authorization: Bearer eyJ0", "https://u:hunter2@h/x"}, []string{"curl", "-H", "Authorization: " + h("Bearer eyJ0"), "https://u:" + h("hunter2") + "@h/x"}},
		{[]string{"curl", "-H", "X-Api-Key:k1", "--oauth2-bearer", "t"}, []string{"curl", "-H", "X-Api-Key: " + h("k1"), "--oauth2-bearer", "t"}},
		{[]string{"sh", "-c", "curl -H 'Authorization: Bearer abc' x"}, []string{"sh", "-c", "curl -H 'Authorization: Bearer " + h("abc") + "' x"}},
		{[]string{"helm", "--set", "db.password=x", "--set=a.token=y"}, []string{"helm", "--set", "db.password=" + h("x"), "--set=a.token=" + h("y")}},
		{[]string{"psql", "--url=postgres://app:pw@db:5432/x?sslmode=disable"}, []string{"psql", "--url=postgres://app:" + h("pw") + "@db:5432/x?sslmode=disable"}},
		{[]string{"wget", "https://h/p?access_token=t1&a=b"}, []string{"wget", "https://h/p?access_token=" + h("t1") + "&a=b"}},
		// kept: short options, users without a password, host:port, paths
		{[]string{"mysql", "-p", "x", "https://u@h", "keycloak:8080", "/etc/key"}, nil},
		{[]string{"/usr/bin/keytool", "-list"}, nil},
	} {
		got := New().Args(c.in)
		want := c.want
		if want == nil {
			want = c.in
		}
		if !slices.Equal(got, want) {
			t.Errorf("Args(%q)\n got %q\nwant %q", c.in, got, want)
		}
	}
}

func TestArgsNoCopyWhenClean(t *testing.T) {
	in := []string{"/bin/ls", "-la", "/tmp"}
	if got := New().Args(in); &got[0] != &in[0] {
		t.Fatal("clean argv was copied")
	}
	if n := testing.AllocsPerRun(100, func() { New().Args(in) }); n > 2 { // New's own
		t.Fatalf("%v allocations", n)
	}
	var r *Rules
	if n := testing.AllocsPerRun(100, func() { r.Args(in) }); n != 0 {
		t.Fatalf("%v allocations on a clean argv", n)
	}
	secret := []string{"app", "--token=x"}
	_ = r.Args(secret)
	if secret[1] != "--token=x" {
		t.Fatal("the input was modified")
	}
}

func TestEqualSecretsHashEqual(t *testing.T) {
	a := New().Args([]string{"a", "--token=s3cr3t"})[1]
	b := New().Env("TOKEN", "s3cr3t")
	if !strings.HasSuffix(a, b) || Value("s3cr3t") == Value("s3cr3u") {
		t.Fatalf("%q %q", a, b)
	}
}

func TestEnvAndExtraNames(t *testing.T) {
	r := New("dsn", " ")
	for _, c := range [][3]string{
		{"DB_PASSWORD", "x", Value("x")},
		{"PATH", "/bin", "/bin"},
		{"DATABASE_URL", "postgres://u:p@h/db", "postgres://u:" + Value("p") + "@h/db"},
		{"PG_DSN", "host=h password=p", Value("host=h password=p")},
		{"EMPTY_TOKEN", "", ""},
	} {
		if got := r.Env(c[0], c[1]); got != c[2] {
			t.Errorf("Env(%s=%s) = %q, want %q", c[0], c[1], got, c[2])
		}
	}
	if New().Sensitive("PG_DSN") || len(r.Names()) != len(DefaultNames)+1 {
		t.Fatal("extra names leak into the defaults, or empty ones are kept")
	}
}

func BenchmarkArgs(b *testing.B) {
	r := New()
	clean := []string{"/usr/bin/python3", "-m", "pytest", "-x", "tests/unit", "--maxfail=1"}
	dirty := []string{"curl", "-H", "Authorization: Bearer abc", "https://u:p@h/x"}
	b.Run("clean", func(b *testing.B) {
		for b.Loop() {
			r.Args(clean)
		}
	})
	b.Run("secret", func(b *testing.B) {
		for b.Loop() {
			r.Args(dirty)
		}
	})
}
