// Package display makes text that an attacker may have shaped safe to show
// to a person: a process's name, a path, a pod's name or a step's error
// travel in events, and a terminal or a browser would act on some of their
// characters rather than show them.
package display
