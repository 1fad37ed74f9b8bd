package server

import (
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// The metrics switchyardd exports. README.md documents each; keep them in
// step.
var (
	descLookups = prometheus.NewDesc("switchyard_lookups_total",
		"New connections and datagrams whose most specific binding has this label.", []string{"label"}, nil)
	descHits = prometheus.NewDesc("switchyard_hits_total",
		"Lookups delivered to the label's socket.", []string{"label"}, nil)
	descMissing = prometheus.NewDesc("switchyard_missing_socket_total",
		"Lookups refused because the label had no usable socket.", []string{"label"}, nil)
	descBadSocket = prometheus.NewDesc("switchyard_bad_socket_total",
		"Lookups refused because the kernel would not assign the label's socket.", []string{"label"}, nil)
	descUnmatched = prometheus.NewDesc("switchyard_unmatched_lookups_total",
		"Lookups that matched no binding and were left to the kernel.", nil, nil)
	descBindings = prometheus.NewDesc("switchyard_bindings",
		"Bindings in force, by label.", []string{"label"}, nil)
	descSockets = prometheus.NewDesc("switchyard_sockets",
		"Registered sockets, by label, protocol and family.", []string{"label", "protocol", "family"}, nil)
	descRefusedReg = prometheus.NewDesc("switchyard_registrations_refused_total",
		"Socket registrations refused: no grant, or an unusable socket.", nil, nil)
	descRefusedChange = prometheus.NewDesc("switchyard_changes_refused_total",
		"Requests to change bindings or settings refused for lack of privilege.", nil, nil)
	descBadRequests = prometheus.NewDesc("switchyard_control_bad_requests_total",
		"Control messages that could not be decoded.", nil, nil)
	descRefusedConns = prometheus.NewDesc("switchyard_control_connections_refused_total",
		"Control connections turned away by the limits on connections per user, in total, and on file descriptors.", nil, nil)
	descRefusedReplies = prometheus.NewDesc("switchyard_control_replies_refused_total",
		"Replies withheld because a user other than root had too many reply bytes unread.", nil, nil)
	descAcceptErrors = prometheus.NewDesc("switchyard_control_accept_errors_total",
		"Failed accepts of control connections (out of file descriptors, ...); the daemon went on serving.", nil, nil)
	descUnfinished = prometheus.NewDesc("switchyard_changes_unfinished_total",
		"Large changes that were in force and acknowledged, but whose writes after the commit point failed; the next change finished them.", nil, nil)
	descScrapeErr = prometheus.NewDesc("switchyard_scrape_errors_total",
		"Times reading the dispatch state for metrics failed.", nil, nil)
	descPolicyBytes = prometheus.NewDesc("switchyard_policy_bytes_total",
		"Bytes moved by a connection policy's fast path (bypass: redirected; splice: proxied).", []string{"label", "policy"}, nil)
	descPolicyKernel = prometheus.NewDesc("switchyard_policy_kernel_bytes_total",
		"Of switchyard_policy_bytes_total, the bytes moved in the kernel (bypass: all of them; splice: the in-kernel engine's share).", []string{"label", "policy"}, nil)
	descPolicyConns = prometheus.NewDesc("switchyard_policy_connections_total",
		"Connections a connection policy took on.", []string{"label", "policy"}, nil)
	descBusyPoll = prometheus.NewDesc("switchyard_bypass_busy_poll_connections_total",
		"Connections bypass left on the normal path because an end busy-polls (SO_BUSY_POLL).", []string{"label"}, nil)
	descReloadOK = prometheus.NewDesc("switchyard_config_last_reload_success",
		"1 if the last load of the --config file (at start, on SIGHUP, or when it changed) succeeded, else 0.", nil, nil)
	descReloadAt = prometheus.NewDesc("switchyard_config_last_reload_timestamp_seconds",
		"When the --config file was last loaded, successfully or not (Unix time).", nil, nil)
	descReloads = prometheus.NewDesc("switchyard_config_reloads_total",
		"Reloads of the --config file after start (SIGHUP or a change seen by the watcher).", nil, nil)
	descReloadFail = prometheus.NewDesc("switchyard_config_reload_failures_total",
		"Reloads of the --config file that failed; the running config stayed.", nil, nil)
	descConfigInfo = prometheus.NewDesc("switchyard_config_info",
		"Always 1; sha256 is that of the --config file in force (empty if it changed while it was read).", []string{"file", "sha256"}, nil)
	descInfo = prometheus.NewDesc("switchyard_build_info",
		"Always 1; the version label says which build runs.", []string{"version"}, nil)
)

type collector struct {
	s          *Server
	scrapeErrs atomic.Uint64
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descLookups, descHits, descMissing, descBadSocket, descUnmatched,
		descBindings, descSockets, descRefusedReg, descRefusedChange, descBadRequests, descScrapeErr, descUnfinished,
		descRefusedConns, descRefusedReplies, descAcceptErrors,
		descPolicyBytes, descPolicyKernel, descPolicyConns, descBusyPoll, descInfo,
		descReloadOK, descReloadAt, descReloads, descReloadFail, descConfigInfo} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	s := c.s
	ch <- prometheus.MustNewConstMetric(descInfo, prometheus.GaugeValue, 1, Version)
	ch <- prometheus.MustNewConstMetric(descRefusedReg, prometheus.CounterValue, float64(s.Stats.RefusedRegistrations.Load()))
	ch <- prometheus.MustNewConstMetric(descRefusedChange, prometheus.CounterValue, float64(s.Stats.RefusedChanges.Load()))
	ch <- prometheus.MustNewConstMetric(descBadRequests, prometheus.CounterValue, float64(s.Stats.BadRequests.Load()))
	s.reloads.collect(ch)
	ch <- prometheus.MustNewConstMetric(descRefusedConns, prometheus.CounterValue, float64(s.Stats.RefusedConnections.Load()))
	ch <- prometheus.MustNewConstMetric(descRefusedReplies, prometheus.CounterValue, float64(s.Stats.RefusedReplies.Load()))
	ch <- prometheus.MustNewConstMetric(descAcceptErrors, prometheus.CounterValue, float64(s.Stats.AcceptErrors.Load()))
	ch <- prometheus.MustNewConstMetric(descUnfinished, prometheus.CounterValue, float64(s.d.Unfinished()))
	defer func() {
		ch <- prometheus.MustNewConstMetric(descScrapeErr, prometheus.CounterValue, float64(c.scrapeErrs.Load()))
	}()

	counters, unmatched, err := s.d.Counters()
	if err != nil {
		c.scrapeErrs.Add(1)
		return
	}
	ch <- prometheus.MustNewConstMetric(descUnmatched, prometheus.CounterValue, float64(unmatched))
	for label, v := range counters {
		ch <- prometheus.MustNewConstMetric(descLookups, prometheus.CounterValue, float64(v.Lookups), label)
		ch <- prometheus.MustNewConstMetric(descHits, prometheus.CounterValue, float64(v.Hits), label)
		ch <- prometheus.MustNewConstMetric(descMissing, prometheus.CounterValue, float64(v.Missing), label)
		ch <- prometheus.MustNewConstMetric(descBadSocket, prometheus.CounterValue, float64(v.BadSocket), label)
	}
	perLabel, err := s.bindingCounts()
	if err != nil {
		c.scrapeErrs.Add(1)
		return
	}
	for label, n := range perLabel {
		ch <- prometheus.MustNewConstMetric(descBindings, prometheus.GaugeValue, float64(n), label)
	}
	s.mu.RLock()
	pm := s.pm
	s.mu.RUnlock()
	if pm != nil {
		if pc, err := pm.Counters(); err != nil {
			c.scrapeErrs.Add(1)
		} else {
			labels := s.Labels()
			for label, v := range pc {
				p := labels[label].Kind.String()
				ch <- prometheus.MustNewConstMetric(descPolicyBytes, prometheus.CounterValue, float64(v.Bytes), label, p)
				ch <- prometheus.MustNewConstMetric(descPolicyKernel, prometheus.CounterValue, float64(v.KernelBytes), label, p)
				ch <- prometheus.MustNewConstMetric(descPolicyConns, prometheus.CounterValue, float64(v.Connections), label, p)
				if p == "bypass" || v.BusyPoll > 0 {
					ch <- prometheus.MustNewConstMetric(descBusyPoll, prometheus.CounterValue, float64(v.BusyPoll), label)
				}
			}
		}
	}
	dests, err := s.d.Destinations()
	if err != nil {
		c.scrapeErrs.Add(1)
		return
	}
	for _, d := range dests {
		ch <- prometheus.MustNewConstMetric(descSockets, prometheus.GaugeValue, 1, d.Label, d.Protocol.String(), d.Family.String())
	}
}

// MetricsHandler serves Prometheus metrics: switchyard's own and the Go
// runtime's.
func (s *Server) MetricsHandler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(&collector{s: s})
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	// Anyone who can reach the address may scrape: a few scrapes at once,
	// each bounded in time, so that scrapes cannot pile up on the state.
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError, MaxRequestsInFlight: 4, Timeout: 10 * time.Second})
}

// collect exports the config file's reload metrics, if there is a file.
func (r *configReloads) collect(ch chan<- prometheus.Metric) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.path == "" {
		return
	}
	ok := 0.0
	if r.ok {
		ok = 1
	}
	ch <- prometheus.MustNewConstMetric(descReloadOK, prometheus.GaugeValue, ok)
	ch <- prometheus.MustNewConstMetric(descReloadAt, prometheus.GaugeValue, float64(r.at.UnixNano())/1e9)
	ch <- prometheus.MustNewConstMetric(descReloads, prometheus.CounterValue, float64(r.reloads))
	ch <- prometheus.MustNewConstMetric(descReloadFail, prometheus.CounterValue, float64(r.failures))
	ch <- prometheus.MustNewConstMetric(descConfigInfo, prometheus.GaugeValue, 1, r.path, r.applied)
}
