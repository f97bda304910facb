package deadline

import (
	"net"
	"sync"
	"time"
)

// Conn is a net.Conn whose deadlines never lie more than an idle bound
// ahead: a deadline of zero (none) or a later one is brought in to now plus
// the bound. Protocol code keeps setting deadlines as it likes (an MQTT
// broker sets 1.5 × the keep-alive after every packet); Conn only caps
// them, so a client that asked for keep-alive 0 still has a server-side
// idle bound.
type Conn struct {
	net.Conn
	idle time.Duration

	mu   sync.Mutex
	last time.Time // no deadline later than this, once Cut; zero before
}

// Idle returns c with every deadline capped at idle from when it is set.
// An idle of zero or less leaves the deadlines as they are set.
func Idle(c net.Conn, idle time.Duration) *Conn {
	return &Conn{Conn: c, idle: idle}
}

// Cut caps every deadline, from now on, at d from now: the connection
// ends within d whatever the protocol code sets later. Cut only ever
// brings the end nearer.
func (c *Conn) Cut(d time.Duration) {
	t := time.Now().Add(d)
	c.mu.Lock()
	if c.last.IsZero() || t.Before(c.last) {
		c.last = t
	}
	c.mu.Unlock()
	_ = c.Conn.SetDeadline(t)
}

func (c *Conn) bound(t time.Time) time.Time {
	if c.idle > 0 {
		if limit := time.Now().Add(c.idle); t.IsZero() || t.After(limit) {
			t = limit
		}
	}
	c.mu.Lock()
	last := c.last
	c.mu.Unlock()
	if !last.IsZero() && (t.IsZero() || t.After(last)) {
		t = last
	}
	return t
}

// SetDeadline sets both deadlines, capped.
func (c *Conn) SetDeadline(t time.Time) error { return c.Conn.SetDeadline(c.bound(t)) }

// SetReadDeadline sets the read deadline, capped.
func (c *Conn) SetReadDeadline(t time.Time) error { return c.Conn.SetReadDeadline(c.bound(t)) }

// SetWriteDeadline sets the write deadline, capped.
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.Conn.SetWriteDeadline(c.bound(t)) }
