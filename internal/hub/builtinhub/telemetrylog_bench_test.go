package builtinhub

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dpsd/dpsd/internal/store/sqlite"
)

// BenchmarkTelemetryIngest measures taking in one telemetry message of
// 256 bytes until it may be acknowledged: in memory only (what dpsd did
// before telemetry was stored before the acknowledgement), and stored in
// SQLite (synchronous=FULL) by one sender at a time and by 64 at once,
// whose messages share commits.
func BenchmarkTelemetryIngest(b *testing.B) {
	body := string(make([]byte, 256))
	msg := func(i int64) Message {
		return Message{DeviceID: fmt.Sprintf("dev-%d", i%64), Body: body, EnqueuedTime: time.Now(),
			SystemProperties: map[string]string{"messageId": fmt.Sprint(i)}}
	}
	b.Run("memory/senders=1", func(b *testing.B) {
		buf := newMessageBuffer(DefaultMessageBuffer, 0, 0, nil)
		for i := range b.N {
			buf.add(msg(int64(i)))
		}
	})
	b.Run("memory/senders=64", func(b *testing.B) {
		buf := newMessageBuffer(DefaultMessageBuffer, 0, 0, nil)
		var i atomic.Int64
		b.SetParallelism(64)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				buf.add(msg(i.Add(1)))
			}
		})
	})
	for _, senders := range []int{1, 64} {
		b.Run(fmt.Sprintf("sqlite/senders=%d", senders), func(b *testing.B) {
			st, err := sqlite.Open(context.Background(), filepath.Join(b.TempDir(), "dpsd.db"))
			if err != nil {
				b.Fatal(err)
			}
			defer st.Close()
			buf := newMessageBuffer(DefaultMessageBuffer, 0, 0, nil)
			l := newTelemetryLog(st, "bench-hub", buf, slog.New(slog.DiscardHandler))
			if err := l.load(context.Background()); err != nil {
				b.Fatal(err)
			}
			l.start()
			defer l.close(context.Background())
			var i atomic.Int64
			b.ResetTimer()
			if senders == 1 {
				for range b.N {
					if err := l.keep([]Message{msg(i.Add(1))}); err != nil {
						b.Fatal(err)
					}
				}
				return
			}
			b.SetParallelism(senders)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := l.keep([]Message{msg(i.Add(1))}); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
