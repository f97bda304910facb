package deadline

import (
	"net/http"
	"time"
)

// Body gives r's body d to arrive, counted from now. A request without a
// body is left alone.
//
// net/http lifts the read deadline itself when the body has been read to
// its end (its background read, which watches for a client that goes
// away, starts with none), so a handler that then works longer than d (a
// register waiting for a slow webhook) keeps its request. For a request
// without a body that background read is already running, and a deadline
// set now would end it, and the request's context, after d: hence the
// exception. A handler that stops reading early keeps the deadline, so a
// trickled remainder cannot hold the connection while the server drains it.
func Body(w http.ResponseWriter, r *http.Request, d time.Duration) {
	if r.Body == nil || r.Body == http.NoBody || d <= 0 {
		return
	}
	// A writer that cannot (a test's recorder) has no connection to hold.
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(d))
}
