package server

import (
	"context"
	"net/http"
	"time"

	"github.com/dpsd/dpsd/internal/httperr"
	"github.com/dpsd/dpsd/internal/store"
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
// not answer or cannot write (a registration is a write), so that traffic
// moves to nodes that can serve it.
func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), healthTimeout)
	defer cancel()
	var err error
	switch st := s.st.(type) {
	case store.WriteChecker:
		err = st.CheckWrite(ctx)
	case pinger:
		err = st.Ping(ctx)
	}
	if err != nil {
		// The cause stays in the log: it may name hosts and users of the
		// database.
		e := httperr.Unavailable()
		e.TrackingID = httperr.NewTrackingID()
		e.Message = "The store does not answer or cannot write."
		e.Info = map[string]string{"status": "unavailable"}
		s.log.Warn("health check: store unavailable or not writable", "trackingId", e.TrackingID, "err", err)
		httperr.Write(w, r, nil, e)
		return
	}
	httperr.WriteJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}
