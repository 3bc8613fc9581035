package main_test

import (
	"testing"

	"parry.dev/parry/tests/devenv"
)

// TestMain stops the test environment the PostgreSQL tests start.
func TestMain(m *testing.M) { devenv.Main(m) }
