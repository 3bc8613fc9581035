// Command classify runs parry's classify step as a Knative Service (see
// cmd/internal/stepmain for its environment).
package main

import (
	"parry.dev/parry/cmd/internal/stepmain"
	"parry.dev/parry/functions/classify"
)

func main() { stepmain.Main(classify.Definition()) }
