package metrics

import (
	"net/http"
	"time"

	"github.com/dpsd/dpsd/api/admin"
	"github.com/dpsd/dpsd/api/dps"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metric names, for documentation and tests.
const (
	DeviceRequestsTotal    = "dpsd_device_requests_total"
	DeviceRequestDuration  = "dpsd_device_request_duration_seconds"
	RegistrationsTotal     = "dpsd_registrations_total"
	ServiceRequestsTotal   = "dpsd_service_requests_total"
	ServiceRequestDuration = "dpsd_service_request_duration_seconds"
	CustomDuration         = "dpsd_custom_allocation_duration_seconds"
	CustomAllocations      = "dpsd_custom_allocations_total"
	CustomRetries          = "dpsd_custom_allocation_retries_total"
)

// Values of the operation label of the device metrics.
const (
	OpRegister        = "register"
	OpOperationStatus = "operation_status"
	OpStatusLookup    = "status_lookup"
)

// Values of the outcome label of dpsd_device_requests_total besides the
// registration statuses (assigned, assigning, failed, disabled, unassigned).
const (
	OutcomeError4xx = "error_4xx"
	OutcomeError5xx = "error_5xx"
	// OutcomeUnknown is a status the engine answered that dpsd does not
	// know; it keeps the label's values bounded whatever a store holds.
	OutcomeUnknown = "unknown"
)

// deviceBuckets reach further than Prometheus's defaults: a register that
// calls a custom allocation webhook and a remote hub can take tens of
// seconds, and those are the requests worth seeing.
var deviceBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}

// Metrics holds a node's registry and the collectors dpsd updates. The zero
// value is not usable; call New.
type Metrics struct {
	reg *prometheus.Registry

	deviceRequests  *prometheus.CounterVec
	deviceDuration  *prometheus.HistogramVec
	registrations   *prometheus.CounterVec
	serviceRequests *prometheus.CounterVec
	serviceDuration *prometheus.HistogramVec
	customDuration  *prometheus.HistogramVec
	customOutcomes  *prometheus.CounterVec
	customRetries   *prometheus.CounterVec
}

// New returns a registry with the Go runtime, process and build-information
// collectors and dpsd's own metrics.
func New() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		deviceRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: DeviceRequestsTotal,
			Help: "Device API requests that reached the provisioning engine, by transport (https, mqtt, mqtt-ws, amqp, amqp-ws), operation (register, operation_status, status_lookup) and outcome (the registration status answered, or error_4xx/error_5xx).",
		}, []string{"transport", "operation", "outcome"}),
		deviceDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    DeviceRequestDuration,
			Help:    "Time the provisioning engine took to answer a device request, by transport and operation.",
			Buckets: deviceBuckets,
		}, []string{"transport", "operation"}),
		registrations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: RegistrationsTotal,
			Help: "Registration operations a device was told had ended, by terminal status (assigned, failed, disabled).",
		}, []string{"status"}),
		serviceRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: ServiceRequestsTotal,
			Help: "Service API requests (enrollments, enrollment groups, registrations), by HTTP method and status code.",
		}, []string{"method", "code"}),
		serviceDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    ServiceRequestDuration,
			Help:    "Time the service API took to answer, by HTTP method.",
			Buckets: prometheus.DefBuckets,
		}, []string{"method"}),
		customDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    CustomDuration,
			Help:    "Time of each custom allocation webhook call (answered or not) or in-process policy evaluation of a registration, by enrollment group (\"\" for individual enrollments) and method (webhook, policy).",
			Buckets: customBuckets,
		}, []string{"group", "method"}),
		customOutcomes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: CustomAllocations,
			Help: "Custom allocations that ended, by enrollment group, method and row of Azure's outcome table: assigned, or the error code the device saw (400207, 400208, 400209, 400210).",
		}, []string{"group", "method", "outcome"}),
		customRetries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: CustomRetries,
			Help: "Custom allocation webhook calls retried (after a 429, a 5xx or no answer), by enrollment group and method.",
		}, []string{"group", "method"}),
	}
	m.reg.MustRegister(
		m.customDuration, m.customOutcomes, m.customRetries,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewBuildInfoCollector(),
		m.deviceRequests, m.deviceDuration, m.registrations,
		m.serviceRequests, m.serviceDuration,
	)
	// Every terminal status is exposed from the start, at zero, so that
	// rates and alerts on failures work before the first failure.
	for _, st := range []string{dps.StatusAssigned, dps.StatusFailed, dps.StatusDisabled} {
		m.registrations.WithLabelValues(st)
	}
	return m
}

// customBuckets span an in-process policy (microseconds) to a webhook
// attempt that times out (Azure's 30 s).
var customBuckets = []float64{.0001, .0005, .001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}

// CustomAttempt implements allocate.Observer.
func (m *Metrics) CustomAttempt(group, method string, d time.Duration) {
	m.customDuration.WithLabelValues(group, method).Observe(d.Seconds())
}

// CustomOutcome implements allocate.Observer. A group's series appear with
// its first custom allocation.
func (m *Metrics) CustomOutcome(group, method, outcome string, retries int) {
	m.customOutcomes.WithLabelValues(group, method, outcome).Inc()
	c := m.customRetries.WithLabelValues(group, method)
	if retries > 0 {
		c.Add(float64(retries))
	}
}

// Registry returns the registry, for callers that add collectors of their
// own or gather in tests.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the registry in the Prometheus exposition formats. Its own
// scrapes and encoding errors are counted on the registry too
// (promhttp_metric_handler_*), so a failing scrape is visible.
func (m *Metrics) Handler() http.Handler {
	return promhttp.InstrumentMetricHandler(m.reg, promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		Registry: m.reg,
		// Serve what could be gathered rather than nothing: one broken
		// collector should not blind the operator to the rest.
		ErrorHandling: promhttp.ContinueOnError,
	}))
}

// InstrumentService wraps the service API handler so that every request is
// counted by method and status code and timed by method. Methods outside
// HTTP's standard set are reported as "unknown" and methods are lower-case,
// as promhttp sanitizes them, which keeps the series bounded whatever
// clients send.
func (m *Metrics) InstrumentService(h http.Handler) http.Handler {
	return promhttp.InstrumentHandlerCounter(m.serviceRequests,
		promhttp.InstrumentHandlerDuration(m.serviceDuration, h))
}

// Metric names of the linked hubs' health.
const (
	LinkedHubHealth              = "dpsd_linked_hub_health"
	LinkedHubCheckSeconds        = "dpsd_linked_hub_check_duration_seconds"
	LinkedHubConsecutiveFailures = "dpsd_linked_hub_check_consecutive_failures"
)

// LinkedHubHealth exposes the health of the linked hubs, read from all at
// every scrape: dpsd_linked_hub_health{hub,state} is 1 for the hub's
// current state and 0 for the others (so alerts can say
// dpsd_linked_hub_health{state="unhealthy"} == 1), with the last check's
// duration and the failed checks in a row beside it. Hubs not checked yet
// are absent. The hub label is bounded by the 50 hubs one instance links.
func (m *Metrics) LinkedHubHealth(all func() map[string]admin.LinkedHubHealth) {
	m.reg.MustRegister(&hubHealthCollector{all: all})
}

var (
	hubHealthDesc = prometheus.NewDesc(LinkedHubHealth,
		"Health of each linked hub as this node's background checks see it: 1 for the current state (healthy, unhealthy, unknown), 0 for the others.",
		[]string{"hub", "state"}, nil)
	hubCheckDesc = prometheus.NewDesc(LinkedHubCheckSeconds,
		"Duration of the last health check of each linked hub.", []string{"hub"}, nil)
	hubFailuresDesc = prometheus.NewDesc(LinkedHubConsecutiveFailures,
		"Failed health checks of each linked hub since its last successful one.", []string{"hub"}, nil)
)

type hubHealthCollector struct {
	all func() map[string]admin.LinkedHubHealth
}

func (c *hubHealthCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- hubHealthDesc
	ch <- hubCheckDesc
	ch <- hubFailuresDesc
}

func (c *hubHealthCollector) Collect(ch chan<- prometheus.Metric) {
	for hub, h := range c.all() {
		for _, st := range []string{admin.HubHealthHealthy, admin.HubHealthUnhealthy, admin.HubHealthUnknown} {
			v := 0.0
			if h.State == st {
				v = 1
			}
			ch <- prometheus.MustNewConstMetric(hubHealthDesc, prometheus.GaugeValue, v, hub, st)
		}
		ch <- prometheus.MustNewConstMetric(hubCheckDesc, prometheus.GaugeValue, float64(h.LatencyMs)/1000, hub)
		ch <- prometheus.MustNewConstMetric(hubFailuresDesc, prometheus.GaugeValue, float64(h.ConsecutiveFailures), hub)
	}
}
