// Command respawn runs parry's respawn step as a Knative Service (see
// cmd/internal/stepmain for its environment).
package main

import (
	"parry.dev/parry/cmd/internal/stepmain"
	"parry.dev/parry/functions/respawn"
)

func main() { stepmain.Main(respawn.Definition()) }
