package server

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/dpsd/dpsd/internal/allocate"
	"github.com/dpsd/dpsd/internal/alloclog"
	"github.com/dpsd/dpsd/internal/allocpolicy"
	"github.com/dpsd/dpsd/internal/hubhealth"
)

// newAllocator builds the allocation policies over the linked hubs, with
// the custom allocation webhook client recording into the audit log and
// refusing to call the node's own listeners (own) or the targets
// cfg.WebhookTargets refuses.
func newAllocator(cfg Config, linked allocate.HubLister, alog *alloclog.Log, policies *allocpolicy.Registry, signer allocate.Signer, health *hubhealth.Checker, obs allocate.Observer, clientCert func() (*tls.Certificate, error), log *slog.Logger, own []net.Addr) (*allocate.Allocator, error) {
	policy, nets, err := allocationSettings(&cfg)
	if err != nil {
		return nil, err
	}
	targets, err := allocate.ParseTargets(cfg.WebhookTargets)
	if err != nil {
		return nil, fmt.Errorf("--webhook-targets: %w", err)
	}
	var ownAddrs []netip.AddrPort
	for _, a := range own {
		if ap, err := netip.ParseAddrPort(a.String()); err == nil {
			ownAddrs = append(ownAddrs, ap)
		}
	}
	if cfg.DebugAddr != "" {
		// Bound later, in Serve; ":6060" stands for every address.
		if h, p, err := net.SplitHostPort(cfg.DebugAddr); err == nil {
			if h == "" || h == "localhost" {
				h = "0.0.0.0"
			}
			if ap, err := netip.ParseAddrPort(net.JoinHostPort(h, p)); err == nil {
				ownAddrs = append(ownAddrs, ap)
			}
		}
	}
	wh, err := allocate.NewWebhook(allocate.WebhookOptions{
		Targets: targets.WithOwn(ownAddrs...),
		Signer:  signer, Observer: obs, ClientCertificate: clientCert,
		Audit: alog, Logger: log, CAFiles: cfg.WebhookCAFiles,
		MaxConcurrent: cfg.WebhookMaxConcurrent, MaxConcurrentPerGroup: cfg.WebhookMaxConcurrentPerGroup,
	})
	if err != nil {
		return nil, fmt.Errorf("custom allocation webhooks: %w", err)
	}
	opt := allocate.Options{
		Hubs: linked, DefaultPolicy: policy, Networks: nets, Webhook: wh, Policies: policies, Logger: log,
		SkipUnhealthy: !cfg.AllocateToUnhealthyHubs,
	}
	if health != nil {
		// A nil *Checker in the interface would not be a nil interface.
		opt.Health = health
	}
	return allocate.New(opt)
}

// webhookClientCert returns what gives the client certificate presented
// to webhooks that ask for one, or nil when cfg.WebhookClientCert is off.
// The certificate is kept in memory and issued anew by the local CA when
// it has less than 30 days left, so a node that runs for a year keeps a
// valid one.
func (s *Server) webhookClientCert() func() (*tls.Certificate, error) {
	if !s.cfg.WebhookClientCert {
		return nil
	}
	var (
		mu   sync.Mutex
		cert *tls.Certificate
	)
	return func() (*tls.Certificate, error) {
		mu.Lock()
		defer mu.Unlock()
		if cert != nil && time.Until(cert.Leaf.NotAfter) > 30*24*time.Hour {
			return cert, nil
		}
		c, err := s.ca.ClientCertificate("webhook-client", s.inst.IDScope)
		if err != nil {
			s.log.Error("webhook client certificate", "err", err)
			return nil, err
		}
		cert = &c
		return cert, nil
	}
}
