package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/client/device"
	"github.com/dpsd/dpsd/client/service"
	"github.com/dpsd/dpsd/internal/allocpolicy"
	"github.com/dpsd/dpsd/internal/hub/builtinhub"
	"github.com/dpsd/dpsd/internal/linkedhub"
	"github.com/dpsd/dpsd/internal/metrics"
)

// TestCustomAllocationMetrics registers devices whose custom allocations
// end in each row of Azure's outcome table, through webhooks (one retried
// once) and in-process policies, for groups and an individual enrollment,
// then scrapes /metrics from the debug listener and reads the latency
// histogram, the outcomes and the retries per group.
func TestCustomAllocationMetrics(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	l, err := net.Listen("tcp", "127.0.16.4:0")
	if err != nil {
		t.Fatal(err)
	}
	debugAddr := l.Addr().String()
	l.Close()
	s, err := Start(ctx, Config{
		DataDir: t.TempDir(), HostName: "127.0.16.4",
		HTTPSAddr: "127.0.16.4:0", MQTTAddr: "127.0.16.4:0", AMQPAddr: "127.0.16.4:0", DebugAddr: debugAddr,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	defer func() { cancel(); <-done }()
	info := s.Info()

	bi, err := s.hubs.Create(ctx, "metrics-hub", builtinhub.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cs, _ := s.hubs.HubConnectionString(ctx, bi.HostName)
	if _, err := s.linked.Create(ctx, linkedhub.Definition{ConnectionString: cs.String()}); err != nil {
		t.Fatal(err)
	}
	for name, expr := range map[string]string{
		"first-hub": `{"iotHubHostName": linkedHubs[0]}`,
		"refuse":    `{"refuse": "not this one"}`,
	} {
		if _, _, err := s.policies.Put(ctx, name, allocpolicy.Definition{Expression: expr}, "", ""); err != nil {
			t.Fatalf("policy %s: %v", name, err)
		}
	}

	// The webhook: /retry-once fails with 500 the first time each device
	// calls, then assigns; /unauthorized answers 401; /no-hub names no hub.
	var mu sync.Mutex
	seen := map[string]bool{}
	hook := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		switch r.URL.Path {
		case "/retry-once":
			mu.Lock()
			first := !seen[string(body)]
			seen[string(body)] = true
			mu.Unlock()
			if first {
				http.Error(w, "cold start", http.StatusInternalServerError)
				return
			}
			fmt.Fprintf(w, `{"iotHubHostName":%q}`, bi.HostName)
		case "/unauthorized":
			http.Error(w, "no", http.StatusUnauthorized)
		case "/no-hub":
			fmt.Fprint(w, `{}`)
		}
	})}
	hl, err := net.Listen("tcp", "127.0.16.5:0")
	if err != nil {
		t.Fatal(err)
	}
	go hook.Serve(hl)
	defer hook.Close()
	hookURL := "http://" + hl.Addr().String()

	svc, err := service.New(info.ServiceConnectionString, service.WithCAFile(info.CACertFile))
	if err != nil {
		t.Fatal(err)
	}
	groupKey := map[string]string{}
	for id, url := range map[string]string{
		"hooks-retry": hookURL + "/retry-once", "hooks-401": hookURL + "/unauthorized",
		"hooks-nohub": hookURL + "/no-hub", "policy-group": "policy:first-hub",
	} {
		g, err := svc.CreateEnrollmentGroup(ctx, &dps.EnrollmentGroup{
			EnrollmentGroupID: id, Attestation: &dps.AttestationMechanism{Type: dps.AttestationSymmetricKey},
			AllocationPolicy: dps.AllocationCustom, CustomAllocationDefinition: &dps.CustomAllocationDefinition{WebhookURL: url, APIVersion: "2021-10-01"},
		})
		if err != nil {
			t.Fatalf("group %s: %v", id, err)
		}
		groupKey[id] = g.Attestation.SymmetricKey.PrimaryKey
	}
	ind, err := svc.CreateEnrollment(ctx, &dps.IndividualEnrollment{
		RegistrationID: "refused-one", Attestation: &dps.AttestationMechanism{Type: dps.AttestationSymmetricKey},
		AllocationPolicy: dps.AllocationCustom, CustomAllocationDefinition: &dps.CustomAllocationDefinition{WebhookURL: "policy:refuse", APIVersion: "2021-10-01"},
	})
	if err != nil {
		t.Fatal(err)
	}

	register := func(id string, cfg device.Config) int {
		t.Helper()
		rctx, rcancel := context.WithTimeout(ctx, 60*time.Second)
		defer rcancel()
		cfg.ProvisioningHost, cfg.DialAddr, cfg.IDScope, cfg.RegistrationID = info.HostName, info.HTTPSAddr, info.IDScope, id
		cfg.Transport, cfg.RootCAs, cfg.Timeout = device.TransportHTTPS, caPool(t, info.CACertFile), 60*time.Second
		_, err := device.Register(rctx, cfg)
		var de *dps.Error
		switch {
		case err == nil:
			return 0
		case errors.As(err, &de):
			return de.ErrorCode
		}
		t.Fatalf("register %s: %v", id, err)
		return -1
	}
	for _, tc := range []struct {
		group, id string
		want      int
	}{
		{"hooks-retry", "retry-1", 0}, {"hooks-retry", "retry-2", 0},
		{"hooks-401", "noauth-1", dps.CodeCustomAllocationUnauthorizedAccess},
		{"hooks-nohub", "nohub-1", dps.CodeCustomAllocationIoTHubNotSpecified},
		{"policy-group", "policy-1", 0}, {"policy-group", "policy-2", 0}, {"policy-group", "policy-3", 0},
	} {
		if got := register(tc.id, device.Config{GroupKey: groupKey[tc.group]}); got != tc.want {
			t.Errorf("%s in %s ended with %d, want %d", tc.id, tc.group, got, tc.want)
		}
	}
	if got := register("refused-one", device.Config{SymmetricKey: ind.Attestation.SymmetricKey.PrimaryKey}); got != dps.CodeCustomAllocationFailed {
		t.Errorf("refused-one ended with %d, want %d", got, dps.CodeCustomAllocationFailed)
	}

	// Scrape, as Prometheus would.
	resp, err := http.Get("http://" + debugAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	value := func(name string, labels map[string]string) float64 {
		t.Helper()
		mf := families[name]
		if mf == nil {
			t.Fatalf("%s not scraped", name)
		}
	series:
		for _, m := range mf.GetMetric() {
			for k, v := range labels {
				if labelValue(m, k) != v {
					continue series
				}
			}
			if h := m.GetHistogram(); h != nil {
				return float64(h.GetSampleCount())
			}
			return m.GetCounter().GetValue()
		}
		return 0
	}
	for _, c := range []struct {
		metric string
		labels map[string]string
		want   float64
	}{
		{metrics.CustomAllocations, map[string]string{"group": "hooks-retry", "method": "webhook", "outcome": "assigned"}, 2},
		{metrics.CustomRetries, map[string]string{"group": "hooks-retry", "method": "webhook"}, 2},
		{metrics.CustomDuration, map[string]string{"group": "hooks-retry", "method": "webhook"}, 4},
		{metrics.CustomAllocations, map[string]string{"group": "hooks-401", "method": "webhook", "outcome": "400209"}, 1},
		{metrics.CustomRetries, map[string]string{"group": "hooks-401", "method": "webhook"}, 0},
		{metrics.CustomAllocations, map[string]string{"group": "hooks-nohub", "method": "webhook", "outcome": "400208"}, 1},
		{metrics.CustomAllocations, map[string]string{"group": "policy-group", "method": "policy", "outcome": "assigned"}, 3},
		{metrics.CustomDuration, map[string]string{"group": "policy-group", "method": "policy"}, 3},
		{metrics.CustomAllocations, map[string]string{"group": "", "method": "policy", "outcome": "400207"}, 1},
	} {
		if got := value(c.metric, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.metric, c.labels, got, c.want)
		}
	}
	if !strings.Contains(families[metrics.CustomDuration].GetHelp(), "enrollment group") {
		t.Errorf("histogram help: %q", families[metrics.CustomDuration].GetHelp())
	}
}
