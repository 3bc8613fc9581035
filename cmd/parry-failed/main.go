// Command parry-failed runs parry's dead-letter sink as a Knative Service
// (see cmd/internal/stepmain for its environment).
package main

import (
	"parry.dev/parry/cmd/internal/stepmain"
	"parry.dev/parry/functions/failed"
)

func main() { stepmain.Main(failed.Definition()) }
