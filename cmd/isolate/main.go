// Command isolate runs parry's isolate step as a Knative Service (see
// cmd/internal/stepmain for its environment).
package main

import (
	"parry.dev/parry/cmd/internal/stepmain"
	"parry.dev/parry/functions/isolate"
)

func main() { stepmain.Main(isolate.Definition()) }
