package sqlite

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"testing"

	"github.com/dpsd/dpsd/internal/store"
)

// benchDoc is about the size of a registration record.
var benchDoc = []byte(`{"registrationId":"device-000000","createdDateTimeUtc":"2024-01-01T00:00:00Z",` +
	`"assignedHub":"contoso-hub-1.azure-devices.net","deviceId":"device-000000","status":"assigned",` +
	`"substatus":"initialAssignment","lastUpdatedDateTimeUtc":"2024-01-01T00:00:00Z","etag":"IjAwMDAwMDAwLTAwMDAtMDAwMC0wMDAwLTAwMDAwMDAwMDAwMCI=",` +
	`"payload":{"modelId":"dtmi:com:example:Thermostat;1"}}`)

// benchWriters is the number of concurrent writers, as many devices
// registering at once would produce.
const benchWriters = 64

func openBench(b *testing.B) *Store {
	b.Helper()
	s, err := Open(b.Context(), filepath.Join(b.TempDir(), "dpsd.db"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s
}

// writers runs write for new device ids from benchWriters goroutines until
// b.N writes are done.
func writers(b *testing.B, write func(id string) error) {
	var seq atomic.Int64
	b.SetParallelism((benchWriters + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := write(fmt.Sprintf("device-%09d", seq.Add(1))); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func reportOps(b *testing.B) {
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
}

// BenchmarkPut measures durable creates from 64 concurrent writers, the
// case group commit exists for, at both synchronous settings.
func BenchmarkPut(b *testing.B) {
	for _, mode := range []string{"FULL", "NORMAL"} {
		b.Run("synchronous="+mode, func(b *testing.B) {
			old := synchronous
			synchronous = mode
			defer func() { synchronous = old }()
			s := openBench(b)
			writers(b, func(id string) error {
				_, err := s.Put(b.Context(), store.Record{Kind: store.KindRegistration, ID: id, Ref: "group-1", Data: benchDoc}, store.Condition{MustNotExist: true})
				return err
			})
			reportOps(b)
		})
	}
}

// BenchmarkPutSerial measures one writer at a time: the latency of one
// durable commit, with no batching to help.
func BenchmarkPutSerial(b *testing.B) {
	s := openBench(b)
	b.ResetTimer()
	for i := range b.N {
		rec := store.Record{Kind: store.KindRegistration, ID: fmt.Sprintf("device-%09d", i), Data: benchDoc}
		if _, err := s.Put(b.Context(), rec, store.Condition{}); err != nil {
			b.Fatal(err)
		}
	}
	reportOps(b)
}

// BenchmarkGet measures parallel point reads over 10,000 records.
func BenchmarkGet(b *testing.B) {
	const n = 10000
	s := openBench(b)
	var seq atomic.Int64
	writeN(b, s, n, &seq)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		r := rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
		for pb.Next() {
			id := fmt.Sprintf("DEVICE-%09d", 1+r.IntN(n)) // lookups ignore case
			if _, err := s.Get(b.Context(), store.KindRegistration, id); err != nil {
				b.Error(err)
				return
			}
		}
	})
	reportOps(b)
}

// BenchmarkGetMissing measures parallel Gets of ids that do not exist, as
// a new device's registration makes three of, answered from the key index
// or, WithoutIndex, by the database.
func BenchmarkGetMissing(b *testing.B) {
	for _, indexed := range []bool{true, false} {
		b.Run(fmt.Sprint("index=", indexed), func(b *testing.B) {
			var opts []Option
			if !indexed {
				opts = append(opts, WithoutIndex())
			}
			s, err := Open(b.Context(), filepath.Join(b.TempDir(), "dpsd.db"), opts...)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { s.Close() })
			const n = 10000
			var seq atomic.Int64
			writeN(b, s, n, &seq)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				r := rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
				for pb.Next() {
					id := fmt.Sprintf("device-%09d", n+1+r.IntN(n))
					if _, err := s.Get(b.Context(), store.KindRegistration, id); !errors.Is(err, store.ErrNotFound) {
						b.Errorf("Get of missing %s: %v", id, err)
						return
					}
				}
			})
			reportOps(b)
		})
	}
}

func writeN(b *testing.B, s *Store, n int, seq *atomic.Int64) {
	b.Helper()
	done := make(chan error, benchWriters)
	for range benchWriters {
		go func() {
			for {
				i := seq.Add(1)
				if i > int64(n) {
					done <- nil
					return
				}
				rec := store.Record{Kind: store.KindRegistration, ID: fmt.Sprintf("device-%09d", i), Data: benchDoc}
				if _, err := s.Put(b.Context(), rec, store.Condition{}); err != nil {
					done <- err
					return
				}
			}
		}()
	}
	for range benchWriters {
		if err := <-done; err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkApply measures what a new device costs the store on the staged
// path: one batch of three creates (registration, hub identity, allocation
// log entry) from 64 concurrent writers, against the same three records
// written one after another as separate Puts.
func BenchmarkApply(b *testing.B) {
	three := func(id string) []store.Write {
		return []store.Write{
			{Record: store.Record{Kind: store.KindRegistration, ID: id, Ref: "group-1", Data: benchDoc}, Cond: store.Condition{MustNotExist: true}},
			{Record: store.Record{Kind: store.KindHubDevice, ID: "hub/" + id, Ref: "hub", Data: benchDoc}, Cond: store.Condition{MustNotExist: true}},
			{Record: store.Record{Kind: store.KindAllocationLog, ID: id, Data: benchDoc}, Cond: store.Condition{MustNotExist: true}},
		}
	}
	for _, batched := range []bool{true, false} {
		b.Run(fmt.Sprintf("batched=%v", batched), func(b *testing.B) {
			s := openBench(b)
			writers(b, func(id string) error {
				writes := three(id)
				if batched {
					_, err := s.Apply(b.Context(), writes)
					return err
				}
				for _, w := range writes {
					if _, err := s.Put(b.Context(), w.Record, w.Cond); err != nil {
						return err
					}
				}
				return nil
			})
			reportOps(b)
		})
	}
}
