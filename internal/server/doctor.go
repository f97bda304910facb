package server

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dpsd/dpsd/api/admin"
	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/httperr"
	"github.com/dpsd/dpsd/internal/instance"
	"github.com/dpsd/dpsd/internal/provision"
)

// doctor runs consistency checks (provision.Engine.Check) on demand and on
// a schedule, and keeps the last report for the metrics.
type doctor struct {
	s *Server

	mu   sync.Mutex // one check at a time
	last *provision.CheckReport
}

// check runs one check over every registration and every linked hub.
func (d *doctor) check(ctx context.Context, opt provision.CheckOptions) (*provision.CheckReport, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if hubs, err := d.s.linked.List(ctx); err == nil {
		for _, h := range hubs {
			opt.Hubs = append(opt.Hubs, h.Name)
		}
	}
	rep, err := d.s.engine.Check(ctx, opt)
	if err != nil {
		return nil, err
	}
	d.last = rep
	d.s.log.Info("consistency check", "registrations", rep.Registrations, "problems", rep.Total(),
		"repaired", rep.Repaired, "counts", rep.Counts, "inProgress", rep.InProgress)
	return rep, nil
}

// handler serves /dpsd/doctor: GET checks, POST checks and repairs as the
// body asks. Checking needs RegistrationStatusRead, repairing
// RegistrationStatusWrite.
func (d *doctor) handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var opt provision.CheckOptions
		right := instance.RightRegistrationStatusRead
		switch r.Method {
		case http.MethodGet:
		case http.MethodPost:
			right = instance.RightRegistrationStatusWrite
		default:
			w.Header().Set("Allow", "GET, POST")
			httperr.Write(w, r, d.s.log, dps.Errorf(dps.CodeMethodNotAllowed, "Use GET to check or POST to repair."))
			return
		}
		if !httperr.Authorized(w, r, func(r *http.Request) error { return d.s.auth.Authorize(r, right) }) {
			return
		}
		if r.Method == http.MethodPost {
			var req admin.DoctorRequest
			if r.ContentLength != 0 {
				if err := httperr.DecodeBody(r, &req, 1<<10, true, "a doctor request"); err != nil {
					httperr.Write(w, r, d.s.log, err)
					return
				}
			}
			opt.Repair, opt.Prune = req.Repair, req.Prune
		}
		rep, err := d.check(r.Context(), opt)
		if err != nil {
			d.s.log.Error("consistency check failed", "err", err)
			httperr.Write(w, r, d.s.log, httperr.Unavailable())
			return
		}
		httperr.WriteJSON(w, http.StatusOK, rep)
	})
}

// recoverInterrupted finishes or undoes the registrations whose owner is
// gone, once, without asking any hub about the others.
func (d *doctor) recoverInterrupted(ctx context.Context) {
	d.mu.Lock()
	defer d.mu.Unlock()
	rep, err := d.s.engine.Check(ctx, provision.CheckOptions{Repair: true, OnlyInterrupted: true})
	switch {
	case err != nil && ctx.Err() == nil:
		d.s.log.Warn("recovering interrupted registrations failed; they are recovered when their devices return", "err", err)
	case err == nil && rep.Total() > 0:
		d.s.log.Info("recovered interrupted registrations", "found", rep.Total(), "recovered", rep.Repaired, "registrations", rep.Registrations)
	}
}

// run checks every interval until ctx ends, repairing when asked.
func (d *doctor) run(ctx context.Context, interval time.Duration, repair bool) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if _, err := d.check(ctx, provision.CheckOptions{Repair: repair}); err != nil && ctx.Err() == nil {
			d.s.log.Warn("scheduled consistency check failed", "err", err)
		}
	}
}

// Metric names of the consistency checks.
const (
	metricDoctorProblems   = "dpsd_doctor_problems"
	metricRecovered        = "dpsd_registrations_recovered_total"
	metricBindingRefusals  = "dpsd_registrations_refused_binding_total"
	metricDoctorRegistered = "dpsd_doctor_registrations"
)

// register adds the check's figures to the metrics registry.
func (d *doctor) register(reg prometheus.Registerer) {
	reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: metricRecovered,
		Help: "Interrupted registrations (their node died or stalled) this node finished or undid.",
	}, func() float64 { return float64(d.s.engine.Recovered()) }))
	reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: metricBindingRefusals,
		Help: "Proofs refused because the device is bound to another enrollment.",
	}, func() float64 { return float64(d.s.engine.BindingRefusals()) }))
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: metricDoctorRegistered,
		Help: "Registrations the last consistency check read.",
	}, func() float64 {
		d.mu.Lock()
		defer d.mu.Unlock()
		if d.last == nil {
			return 0
		}
		return float64(d.last.Registrations)
	}))
	for _, kind := range []string{provision.ProblemInterrupted, provision.ProblemMissing, provision.ProblemMismatch, provision.ProblemOrphan, provision.ProblemUnreachable} {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        metricDoctorProblems,
			Help:        "Problems the last consistency check found, by kind (repaired ones included).",
			ConstLabels: prometheus.Labels{"kind": kind},
		}, func() float64 {
			d.mu.Lock()
			defer d.mu.Unlock()
			if d.last == nil {
				return 0
			}
			return float64(d.last.Counts[kind])
		}))
	}
}

// nodeName returns the name of this node, kept in the data directory so
// that a restarted node recognises the work its earlier run left.
func nodeName(dataDir string) (string, error) {
	p := filepath.Join(dataDir, "node-id")
	if b, err := os.ReadFile(p); err == nil {
		if n := strings.TrimSpace(string(b)); n != "" {
			return n, nil
		}
	} else if !os.IsNotExist(err) {
		return "", fmt.Errorf("node id: %w", err)
	}
	host, _ := os.Hostname()
	n := fmt.Sprintf("%s-%s", sanitizeNode(host), httperr.NewTrackingID()[:8])
	if err := os.WriteFile(p, []byte(n+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("node id: %w", err)
	}
	return n, nil
}

func sanitizeNode(s string) string {
	s = strings.Map(func(r rune) rune {
		if r == '/' || r <= ' ' {
			return '-'
		}
		return r
	}, s)
	if s == "" {
		return "node"
	}
	return s
}
