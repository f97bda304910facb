package server

import (
	"context"
	"net/http"
	"time"

	"github.com/dpsd/dpsd/internal/httperr"
)

// healthTimeout bounds the store check of /healthz: a probe that hangs is
// worse than one that fails, since load balancers time out on their own
// terms and keep sending traffic meanwhile.
const healthTimeout = 2 * time.Second

// pinger is a store that can check that its database answers. Only stores
// behind a network have one (PostgreSQL); the embedded SQLite file is
// reachable whenever the process runs.
type pinger interface {
	Ping(ctx context.Context) error
}

// healthz answers load balancers and orchestrators: 200 {"status":"ok"}
// when the node can serve, 503 in Azure's error shape when its store does
// not answer, so that traffic moves to nodes that can answer it.
func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	if p, ok := s.st.(pinger); ok {
		ctx, cancel := context.WithTimeout(r.Context(), healthTimeout)
		defer cancel()
		if err := p.Ping(ctx); err != nil {
			// The cause stays in the log: it may name hosts and users of
			// the database.
			e := httperr.Unavailable()
			e.TrackingID = httperr.NewTrackingID()
			e.Message = "The store does not answer."
			e.Info = map[string]string{"status": "unavailable"}
			s.log.Warn("health check: store unavailable", "trackingId", e.TrackingID, "err", err)
			httperr.Write(w, r, nil, e)
			return
		}
	}
	httperr.WriteJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}
