package builtinhub

import (
	"log/slog"
	"slices"
	"testing"
	"time"
)

// TestC2DSettlement: the queue semantics behind every transport's
// complete, reject and abandon — the lock and its timeout, the delivery
// count bound and expiry, and which messages are dead-lettered with what
// feedback status.
func TestC2DSettlement(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	newQueue := func(msgs ...string) (*c2dQueues, *[]string) {
		var dead []string
		c := newC2DQueues(nil, "hub", slog.New(slog.DiscardHandler))
		c.dead = func(m *queued, status string) { dead = append(dead, m.MessageID+":"+status) }
		for _, id := range msgs {
			c.seq++
			c.queues["dev"] = append(c.queues["dev"], &queued{C2DMessage: C2DMessage{MessageID: id, Expiry: t0.Add(c2dTTL)}, device: "Dev", seq: c.seq, enqueued: t0})
		}
		return c, &dead
	}

	t.Run("complete and reject remove, abandon makes visible again", func(t *testing.T) {
		c, dead := newQueue("a", "b", "c")
		a := c.next("Dev", t0)
		b := c.next("Dev", t0)
		cc := c.next("Dev", t0)
		if a.MessageID != "a" || b.MessageID != "b" || cc.MessageID != "c" || c.next("Dev", t0) != nil {
			t.Fatal("messages not locked one by one in order")
		}
		if m, _ := c.settle("dev", a.lockToken, c2dComplete, t0); m == nil || m.MessageID != "a" {
			t.Fatalf("complete: %v", m)
		}
		if m, _ := c.settle("dev", b.lockToken, c2dReject, t0); m == nil || m.MessageID != "b" {
			t.Fatalf("reject: %v", m)
		}
		if m, _ := c.settle("dev", a.lockToken, c2dComplete, t0); m != nil {
			t.Fatal("a completed message completed twice")
		}
		if m, dl := c.settle("dev", cc.lockToken, c2dAbandon, t0); m == nil || dl {
			t.Fatalf("abandon: %v dead %v", m, dl)
		}
		again := c.next("Dev", t0)
		if again == nil || again.MessageID != "c" || again.deliveries != 2 || again.lockToken == cc.lockToken {
			t.Fatalf("abandoned message again: %+v", again)
		}
		if m, _ := c.settle("dev", cc.lockToken, c2dComplete, t0); m != nil {
			t.Fatal("the old lock settled the message")
		}
		if len(*dead) != 0 {
			t.Errorf("dead-lettered %v", *dead)
		}
	})

	t.Run("lock timeout", func(t *testing.T) {
		c, _ := newQueue("a")
		m := c.next("dev", t0)
		if c.next("dev", t0.Add(c2dLock-time.Second)) != nil {
			t.Fatal("a locked message was delivered again within the lock")
		}
		if _, _ = c.settle("dev", m.lockToken, c2dComplete, t0.Add(c2dLock)); c.queues["dev"] == nil {
			t.Fatal("completed after the lock expired")
		}
		again := c.next("dev", t0.Add(c2dLock+time.Second))
		if again == nil || again.deliveries != 2 {
			t.Fatalf("after the lock: %+v", again)
		}
	})

	t.Run("delivery count exceeded", func(t *testing.T) {
		c, _ := newQueue("a")
		for i := 1; i <= maxDeliveries; i++ {
			m := c.next("dev", t0)
			if m == nil || m.deliveries != i {
				t.Fatalf("delivery %d: %+v", i, m)
			}
			_, dl := c.settle("dev", m.lockToken, c2dAbandon, t0)
			if dl != (i == maxDeliveries) {
				t.Fatalf("delivery %d abandoned: dead-lettered %v", i, dl)
			}
		}
		if c.next("dev", t0) != nil || c.queues["dev"] != nil {
			t.Fatal("a message past its delivery count is still queued")
		}
		// The last delivery's lock runs out unsettled: dead-lettered
		// when the queue is next touched, not while it is locked.
		c, dead := newQueue("b")
		var m *queued
		for range maxDeliveries {
			m = c.next("dev", t0)
			if m.deliveries < maxDeliveries {
				c.settle("dev", m.lockToken, c2dAbandon, t0)
			}
		}
		c.mu.Lock()
		c.expire("dev", t0.Add(time.Second))
		held := len(c.queues["dev"])
		c.mu.Unlock()
		if held != 1 {
			t.Fatal("a message was dropped during its last delivery")
		}
		if c.next("dev", t0.Add(c2dLock+time.Second)) != nil || !slices.Equal(*dead, []string{"b:" + statusDeliveryCount}) {
			t.Fatalf("after the last lock: dead-lettered %v", *dead)
		}
	})

	t.Run("expiry", func(t *testing.T) {
		c, dead := newQueue("a", "b")
		c.queues["dev"][0].Expiry = t0.Add(time.Minute)
		if m := c.next("dev", t0.Add(2*time.Minute)); m == nil || m.MessageID != "b" {
			t.Fatalf("next after a's expiry: %+v", m)
		}
		if !slices.Equal(*dead, []string{"a:" + statusExpired}) {
			t.Fatalf("dead-lettered %v", *dead)
		}
	})
}
