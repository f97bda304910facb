package postgres

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dpsd/dpsd/internal/store"
)

// broadcastChannel is the NOTIFY channel of Broadcast, apart from the
// records' change notifications.
const broadcastChannel = "dpsd_broadcast"

// broadcastBuffer bounds the messages waiting for a slow receiver; past
// it they are dropped and the receiver is told to look at the store.
const broadcastBuffer = 1024

var _ store.Broadcaster = (*Store)(nil)

// broadcastNote is the payload of a broadcast notification. The schema
// tells deployments sharing one database apart, as for changes.
type broadcastNote struct {
	Schema string          `json:"schema"`
	Msg    json.RawMessage `json:"msg"`
}

// sqlBroadcast sends $3 on channel $1, with the schema of the records
// table $2 as the session resolves it.
const sqlBroadcast = "SELECT pg_notify($1, json_build_object('schema'," +
	" (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass($2))," +
	" 'msg', $3::json)::text)"

// Broadcast implements store.Broadcaster; msg must be JSON.
func (s *Store) Broadcast(ctx context.Context, msg []byte) error {
	if s.closed.Load() {
		return errClosed
	}
	if len(msg) > store.MaxBroadcast {
		return fmt.Errorf("broadcast of %d bytes: more than %d", len(msg), store.MaxBroadcast)
	}
	err := s.write(ctx, func(c *pgxpool.Conn, ctx context.Context) error {
		_, err := c.Exec(ctx, sqlBroadcast, broadcastChannel, recordsTable, string(msg))
		return err
	})
	if err != nil {
		return fmt.Errorf("broadcast: %w", s.mapErr(ctx, err))
	}
	return nil
}

// Broadcasts implements store.Broadcaster with a listening connection of
// its own, reconnecting with backoff as Changes does.
func (s *Store) Broadcasts(ctx context.Context) (<-chan []byte, error) {
	s.listenMu.Lock()
	defer s.listenMu.Unlock()
	if s.closed.Load() {
		return nil, errClosed
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(s.life, cancel)
	out := make(chan []byte, broadcastBuffer)
	s.listeners.Add(1)
	go func() {
		defer s.listeners.Done()
		defer stop()
		defer cancel()
		defer close(out)
		s.listenChannel(ctx, broadcastChannel, func(uint32, string) {
			// Anything may have happened before this connection listened.
			deliver(out, []byte{})
		}, func(payload, schema string) {
			var note broadcastNote
			if json.Unmarshal([]byte(payload), &note) == nil && note.Schema == schema {
				deliver(out, note.Msg)
			}
		})
	}()
	return out, nil
}

// deliver passes msg on without ever blocking the listening connection
// (see feed): when the receiver is behind and the buffer full, the
// oldest waiting message gives way to an empty one, which tells the
// receiver it missed some.
func deliver(out chan []byte, msg []byte) {
	for {
		select {
		case out <- msg:
			return
		default:
		}
		select {
		case <-out:
			msg = []byte{}
		default:
		}
	}
}
