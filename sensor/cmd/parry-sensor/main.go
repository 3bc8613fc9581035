// Command parry-sensor is the sensor alone, as the DaemonSet runs it: the
// same code as `parry sensor`, without the broker, functions and clients the
// parry binary links, so a node pays only for what the sensor needs.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"parry.dev/parry/internal/logging"
	"parry.dev/parry/sensor"
)

func main() {
	fs := flag.NewFlagSet("parry-sensor", flag.ExitOnError)
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	logFormat := fs.String("log-format", logging.DefaultFormat(), "console or json")
	cfg := sensor.DefaultConfig()
	cfg.FromEnvironment(os.Getenv)
	cfg.LimitMemory = true // the sensor is alone in this process
	cfg.RegisterFlags(fs)
	fs.Parse(os.Args[1:])
	log, err := logging.New(os.Stderr, *logLevel, *logFormat)
	if err != nil {
		fmt.Fprintln(os.Stderr, "parry-sensor:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := sensor.Probe(); err != nil {
		fmt.Fprintln(os.Stderr, "parry-sensor:", err)
		os.Exit(1)
	}
	if err := sensor.Run(ctx, cfg, log); err != nil {
		fmt.Fprintln(os.Stderr, "parry-sensor:", err)
		os.Exit(1)
	}
}
