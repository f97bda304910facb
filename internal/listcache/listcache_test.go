package listcache

import (
	"context"
	"errors"
	"testing"
	"time"
)

// counter is a loader that returns how many times it was called.
type counter struct {
	n      int
	during func() // runs inside the load, to race it
}

func (c *counter) load(context.Context) ([]int, error) {
	c.n++
	if c.during != nil {
		c.during()
	}
	return []int{c.n}, nil
}

func TestCacheKeepsListForTTL(t *testing.T) {
	var l counter
	c := New(time.Hour, l.load)
	for range 3 {
		got, err := c.List(context.Background())
		if err != nil || len(got) != 1 || got[0] != 1 {
			t.Fatalf("List = %v, %v; want [1]", got, err)
		}
	}
	c.Invalidate()
	if got, _ := c.List(context.Background()); got[0] != 2 {
		t.Fatalf("after Invalidate: List = %v, want [2]", got)
	}
}

func TestCacheReloadsAfterTTL(t *testing.T) {
	var l counter
	c := New(time.Nanosecond, l.load)
	c.List(context.Background())
	time.Sleep(time.Millisecond)
	if got, _ := c.List(context.Background()); got[0] != 2 {
		t.Fatalf("List after TTL = %v, want [2]", got)
	}
}

func TestCacheListFresh(t *testing.T) {
	var l counter
	c := New(time.Hour, l.load)
	c.List(context.Background())
	if got, _ := c.ListFresh(context.Background(), time.Hour); got[0] != 1 {
		t.Fatalf("ListFresh(hour) = %v, want the held [1]", got)
	}
	time.Sleep(time.Millisecond)
	if got, _ := c.ListFresh(context.Background(), time.Microsecond); got[0] != 2 {
		t.Fatalf("ListFresh(µs) = %v, want a reload [2]", got)
	}
}

func TestCacheDropsLoadRacingInvalidate(t *testing.T) {
	var l counter
	c := New(time.Hour, l.load)
	l.during = c.Invalidate
	if got, _ := c.List(context.Background()); got[0] != 1 {
		t.Fatalf("List = %v, want [1]", got)
	}
	l.during = nil
	// The first list predates the invalidation, so it was not kept.
	if got, _ := c.List(context.Background()); got[0] != 2 {
		t.Fatalf("List = %v, want a reload [2]", got)
	}
}

func TestCacheKeepsEmptyListAndNotErrors(t *testing.T) {
	calls := 0
	fail := true
	c := New(time.Hour, func(context.Context) ([]int, error) {
		calls++
		if fail {
			return nil, errors.New("store down")
		}
		return nil, nil
	})
	if _, err := c.List(context.Background()); err == nil {
		t.Fatal("List: want the load's error")
	}
	fail = false
	c.List(context.Background())
	c.List(context.Background())
	if calls != 2 {
		t.Fatalf("loads = %d, want 2: an error is not kept, an empty list is", calls)
	}
}

func TestCacheUpdate(t *testing.T) {
	c := New(time.Hour, func(context.Context) ([]int, error) { return []int{1, 2}, nil })
	called := false
	c.Update(func(s []int) []int { called = true; return s })
	if called {
		t.Fatal("Update called f without a held list")
	}
	c.List(context.Background())
	c.Update(func(s []int) []int { return []int{s[1], s[0]} })
	if got, _ := c.List(context.Background()); got[0] != 2 {
		t.Fatalf("List after Update = %v, want [2 1]", got)
	}
}
