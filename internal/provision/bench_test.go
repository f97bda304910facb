package provision

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkRegister measures the engine alone (attest a group member,
// allocate, record durably) over the embedded store, with no network:
// every iteration is a new device of one symmetric-key group.
//
//	go test ./provision -run '^$' -bench Register -cpu 2
func BenchmarkRegister(b *testing.B) {
	f := newFixture(b, Options{})
	gKey := f.group("bench", "hub.example", "")
	var n atomic.Int64
	exp := time.Now().Add(time.Hour)
	b.SetParallelism(16) // devices arrive concurrently; group commit needs company
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			id := fmt.Sprintf("dev-%d", n.Add(1))
			req := Request{IDScope: scope, RegistrationID: id, SASToken: token(b, id, derived(b, gKey, id), exp)}
			if _, err := f.eng.Register(context.Background(), req); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "registrations/s")
}
