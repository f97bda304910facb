package linkedhub

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/dpsd/dpsd/internal/store"
)

// racingStore lets another writer link a hub just after the first read of
// it finds it not linked, as a concurrent PUT of the same hub would.
type racingStore struct {
	store.Store
	t    *testing.T
	once sync.Once
	def  Definition
}

func (s *racingStore) Get(ctx context.Context, kind store.Kind, id string) (store.Record, error) {
	rec, err := s.Store.Get(ctx, kind, id)
	if kind == Kind && err != nil {
		s.once.Do(func() {
			if _, cerr := New(s.Store).Create(ctx, s.def); cerr != nil {
				s.t.Errorf("concurrent create: %v", cerr)
			}
		})
	}
	return rec, err
}

func TestHandlerPutRace(t *testing.T) {
	st := &racingStore{Store: newStore(t), t: t, def: Definition{ConnectionString: heatpumpsCS}}
	h := New(st).Handler(HandlerOptions{Logger: slog.New(slog.DiscardHandler)})
	w := httptest.NewRecorder()
	body := `{"connectionString":"` + heatpumpsCS + `","location":"eastus"}`
	h.ServeHTTP(w, httptest.NewRequest(http.MethodPut, "/dpsd/linkedHubs/"+heatpumps, strings.NewReader(body)))
	if w.Code != http.StatusOK || !strings.Contains(w.Body.String(), `"location":"eastus"`) {
		t.Errorf("PUT racing another PUT: %d %s; want 200 with the update applied", w.Code, w.Body)
	}

	// Without a race, PUT still tells a new hub (201) from an update (200).
	h = New(newStore(t)).Handler(HandlerOptions{Logger: slog.New(slog.DiscardHandler)})
	for _, want := range []int{http.StatusCreated, http.StatusOK} {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(http.MethodPut, "/dpsd/linkedHubs/"+heatpumps, strings.NewReader(body)))
		if w.Code != want {
			t.Errorf("PUT: %d %s; want %d", w.Code, w.Body, want)
		}
	}
}
