package playbook

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"parry.dev/parry/internal/manifest"
)

// Load parses every playbook in paths: files, or directories whose *.yaml
// and *.yml files (not below) are read. README and other files are ignored.
func Load(paths ...string) ([]*Source, error) {
	var files []string
	var errs manifest.Errors
	for _, p := range paths {
		fi, err := os.Stat(p)
		if err != nil {
			errs = append(errs, &manifest.Error{Pos: manifest.Position{File: p}, Msg: err.Error()})
			continue
		}
		if !fi.IsDir() {
			files = append(files, p)
			continue
		}
		entries, err := os.ReadDir(p)
		if err != nil {
			errs = append(errs, &manifest.Error{Pos: manifest.Position{File: p}, Msg: err.Error()})
			continue
		}
		for _, e := range entries {
			if ext := filepath.Ext(e.Name()); !e.IsDir() && (ext == ".yaml" || ext == ".yml") {
				files = append(files, filepath.Join(p, e.Name()))
			}
		}
	}
	slices.Sort(files)
	var srcs []*Source
	for _, f := range files {
		data, rerr := manifest.ReadFile(f)
		if rerr != nil {
			errs = append(errs, rerr)
			continue
		}
		got, err := Parse(f, data)
		if err != nil {
			errs = append(errs, err.(manifest.Errors)...)
			continue
		}
		srcs = append(srcs, got...)
	}
	if len(srcs) == 0 && len(errs) == 0 {
		errs = append(errs, &manifest.Error{Pos: manifest.Position{File: fmt.Sprint(paths)}, Msg: "no playbooks found (*.yaml files with kind: Playbook)"})
	}
	if err := errs.Err(); err != nil {
		return nil, err
	}
	return srcs, nil
}
