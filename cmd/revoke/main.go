// Command revoke runs parry's revoke step as a Knative Service (see
// cmd/internal/stepmain for its environment).
package main

import (
	"parry.dev/parry/cmd/internal/stepmain"
	"parry.dev/parry/functions/revoke"
)

func main() { stepmain.Main(revoke.Definition()) }
