// Command snapshot runs parry's snapshot step as a Knative Service (see
// cmd/internal/stepmain for its environment).
package main

import (
	"parry.dev/parry/cmd/internal/stepmain"
	"parry.dev/parry/functions/snapshot"
)

func main() { stepmain.Main(snapshot.Definition()) }
