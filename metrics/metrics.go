// Package metrics is what the operator exposes to Prometheus on GET
// /metrics: deploys by result, deploy and phase durations, webhook
// deliveries by outcome, poll errors, the trigger queue's depth and the
// commit each node runs.
package metrics

import (
	"net/http"

	"github.com/clusterops/operator/history"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics holds the operator's collectors on a registry of its own, so tests
// can make as many as they like.
type Metrics struct {
	reg        *prometheus.Registry
	deploys    *prometheus.CounterVec
	duration   *prometheus.HistogramVec
	phases     *prometheus.HistogramVec
	webhooks   *prometheus.CounterVec
	pollErrors prometheus.Counter
	nodeCommit *prometheus.GaugeVec
}

// New makes the collectors. queueDepth is read at each scrape.
func New(queueDepth func() float64) *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		deploys: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "operator_deploys_total", Help: "Deploys that ended, by environment and result.",
		}, []string{"env", "result"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "operator_deploy_duration_seconds", Help: "How long deploys took, by environment and result.",
			Buckets: []float64{1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200},
		}, []string{"env", "result"}),
		phases: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "operator_deploy_phase_duration_seconds", Help: "How long each phase of a deploy took.",
			Buckets: []float64{0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300},
		}, []string{"env", "phase"}),
		webhooks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "operator_webhook_deliveries_total", Help: "GitHub webhook deliveries, by outcome.",
		}, []string{"outcome"}),
		pollErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "operator_poll_errors_total", Help: "Poll ticks that could not read the branch head.",
		}),
		nodeCommit: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "operator_node_commit", Help: "1 for the commit each node runs, as of the last deploy.",
		}, []string{"env", "node", "commit"}),
	}
	m.reg.MustRegister(m.deploys, m.duration, m.phases, m.webhooks, m.pollErrors, m.nodeCommit,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if queueDepth != nil {
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "operator_queue_depth", Help: "Triggers waiting for the next reconcile (they coalesce into one).",
		}, queueDepth))
	}
	return m
}

// Handler serves the metrics.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// DeployEnded counts a finished deploy and records its durations and what
// each node now runs.
func (m *Metrics) DeployEnded(d *history.Deploy) {
	result := string(d.Result)
	m.deploys.WithLabelValues(d.Env, result).Inc()
	if !d.Ended.IsZero() {
		m.duration.WithLabelValues(d.Env, result).Observe(d.Ended.Sub(d.Started).Seconds())
	}
	for _, p := range d.Phases {
		m.phases.WithLabelValues(d.Env, p.Name).Observe(p.Duration.Seconds())
	}
	for _, n := range d.Nodes {
		m.NodeCommit(d.Env, n.Host, n.To)
	}
}

// NodeCommit records that node runs commit (and no other).
func (m *Metrics) NodeCommit(env, node, commit string) {
	m.nodeCommit.DeletePartialMatch(prometheus.Labels{"env": env, "node": node})
	if commit != "" {
		m.nodeCommit.WithLabelValues(env, node, commit).Set(1)
	}
}

// Webhook counts one delivery by its outcome.
func (m *Metrics) Webhook(outcome string) { m.webhooks.WithLabelValues(outcome).Inc() }

// PollError counts a poll tick that failed.
func (m *Metrics) PollError() { m.pollErrors.Inc() }
