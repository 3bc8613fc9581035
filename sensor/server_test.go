package sensor_test

import (
	"testing"
	"time"

	"parry.dev/parry/internal/httpserver/servertest"
	"parry.dev/parry/sensor"
	"parry.dev/parry/sensor/api"
)

// A client that sends half a request, or nothing after its first, cannot
// hold the sensor's API open past its limits.
func TestAPIClosesSlowClients(t *testing.T) {
	requireKernel(t)
	s := startSensor(t, sensor.Config{RecorderLimits: servertest.Short, HealthInterval: time.Hour})
	servertest.SlowClients(t, servertest.Target{Addr: s.RecorderAddr(), Get: api.RouteHealth, Body: "PUT " + api.BlockPath("no-such-pod")}, servertest.Short)
}
