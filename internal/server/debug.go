package server

import (
	"net/http"
	"net/http/pprof"
)

// debugHandler serves the runtime profiles and the Prometheus metrics. It
// is mounted only on the --debug-addr listener, never on the public ones:
// neither needs a token, and both tell more about the node than devices
// and service clients should learn.
func debugHandler(metrics http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", metrics)
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}
