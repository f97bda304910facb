package e2e

import (
	"strings"
	"testing"
)

// TestBenchFloor runs "dpsd bench --floor" as a user would against a real
// dpsd: every round on both sides succeeds, the ratio is reported, and
// the floor, a process of its own, reports its CPU time.
func TestBenchFloor(t *testing.T) {
	srv := startServer(t)
	for _, tr := range []string{"https", "https-newconn", "mqtt", "amqp", "amqp-ws"} {
		t.Run(tr, func(t *testing.T) {
			type round struct {
				Succeeded int `json:"succeeded"`
				Failed    int `json:"failed"`
			}
			var res struct {
				DPSD     []round `json:"dpsd"`
				Floor    []round `json:"floor"`
				Ratio    float64 `json:"ratio"`
				FloorCPU int64   `json:"floorCpuPerRegistrationUs"`
			}
			out := dpsdCLI(t, srv, "bench", "--setup", "--group-id", "floor-test", "--hub", srv.Hub, "--floor", "--rounds", "2",
				"--registrations", "8", "--concurrency", "4", "--transport", tr, "-o", "json")
			decodeJSON(t, "bench --floor", out, &res)
			if len(res.DPSD) != 2 || len(res.Floor) != 2 {
				t.Fatalf("want 2 rounds on each side: %s", out)
			}
			for i := range 2 {
				if res.DPSD[i].Succeeded != 8 || res.Floor[i].Succeeded != 8 || res.DPSD[i].Failed+res.Floor[i].Failed != 0 {
					t.Errorf("round %d: %s", i+1, out)
				}
			}
			if res.Ratio <= 0 || res.FloorCPU <= 0 {
				t.Errorf("ratio %v, floor CPU %d µs per registration: %s", res.Ratio, res.FloorCPU, out)
			}
		})
	}
	// The table form ends with the ratio and the floor's CPU.
	out := dpsdCLI(t, srv, "bench", "--group-id", "floor-test", "--setup", "--hub", srv.Hub, "--floor", "--rounds", "1",
		"--registrations", "4", "--concurrency", "2")
	for _, want := range []string{"dpsd / floor:", "floor process CPU:"} {
		if !strings.Contains(out, want) {
			t.Errorf("table output lacks %q:\n%s", want, out)
		}
	}
}
