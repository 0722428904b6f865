package replica

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the syncer's Prometheus series. They live in a registry of
// their own (not the global one) so several syncers can run in one process.
type Metrics struct {
	BytesSent     *prometheus.CounterVec
	FilesSent     *prometheus.CounterVec
	WireSent      *prometheus.CounterVec
	LagSeq        *prometheus.GaugeVec
	LagSeconds    *prometheus.GaugeVec
	Ops           prometheus.Counter
	Unreadable    prometheus.Counter
	Rescans       prometheus.Counter
	Overflows     prometheus.Counter
	Cuts          prometheus.Counter
	SyncTimeouts  prometheus.Counter
	AuthFailures  prometheus.Counter
	BytesReceived prometheus.Counter
	ApplyErrors   prometheus.Counter
	Term          prometheus.Gauge
	Seq           prometheus.Gauge
	CaughtUp      prometheus.Gauge
	Healthy       prometheus.Gauge
	Silence       prometheus.Gauge
	InitBytes     prometheus.Gauge
	InitBytesTot  prometheus.Gauge
	InitFiles     prometheus.Gauge
	InitFilesTot  prometheus.Gauge
	// AcceptErrors, PreAuthRefused and ListenerUp say whether clones can
	// reach a master; Unreplicable counts names the master cannot send.
	AcceptErrors   prometheus.Counter
	PreAuthRefused prometheus.Counter
	ListenerUp     prometheus.Gauge
	Unreplicable   prometheus.Counter
}

// NewMetrics registers the series with reg (nil: unregistered, still usable).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	ns := "bedrock_sync"
	m := &Metrics{
		BytesSent:     prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "bytes_sent_total", Help: "File data bytes sent to a clone."}, []string{"clone"}),
		FilesSent:     prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "files_sent_total", Help: "Files (whole or partial) sent to a clone."}, []string{"clone"}),
		WireSent:      prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "wire_bytes_sent_total", Help: "Bytes written to a clone's connection, framing included."}, []string{"clone"}),
		LagSeq:        prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "clone_lag_ops", Help: "Ops the master has that a clone has not acknowledged."}, []string{"clone"}),
		LagSeconds:    prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "clone_lag_seconds", Help: "Age of the oldest op a clone has not acknowledged."}, []string{"clone"}),
		Ops:           prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "ops_total", Help: "Changes detected by the master."}),
		Unreadable:    prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "unreadable_files_total", Help: "Files the master could not read."}),
		Rescans:       prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "rescans_total", Help: "Full rescans of the data directory."}),
		Overflows:     prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "watch_overflows_total", Help: "inotify queue overflows (each forces a rescan)."}),
		Cuts:          prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "journal_cuts_total", Help: "Clones cut over from the watcher's stream to the capture journal."}),
		SyncTimeouts:  prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "sync_timeouts_total", Help: "fsyncs failed because too few clones acknowledged them in time (sync mode)."}),
		AuthFailures:  prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "auth_failures_total", Help: "Peers that failed authentication."}),
		BytesReceived: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "bytes_received_total", Help: "File data bytes applied by this clone."}),
		ApplyErrors:   prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "apply_errors_total", Help: "Changes this clone failed to apply."}),
		Term:          prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "term", Help: "Current term."}),
		Seq:           prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "position_seq", Help: "Replication sequence (master: head; clone: applied)."}),
		CaughtUp:      prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "caught_up", Help: "1 when this clone has applied everything the master announced."}),
		Healthy:       prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "healthy", Help: "0 when the last apply or connection failed."}),
		Silence:       prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "master_silence_seconds", Help: "Seconds since this clone last received anything from its master (0 during an initial sync)."}),
		InitBytes:     prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "initial_sync_bytes_done", Help: "Initial sync progress."}),
		InitBytesTot:  prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "initial_sync_bytes_total", Help: "Initial sync size."}),
		InitFiles:     prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "initial_sync_files_done", Help: "Initial sync progress."}),
		InitFilesTot:  prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "initial_sync_files_total", Help: "Initial sync size."}),
		AcceptErrors: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "accept_errors_total",
			Help: "Failures of the master's replication listener (each is retried with a backoff, or the listener is opened again)."}),
		PreAuthRefused: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "preauth_refused_total",
			Help: "Unauthenticated connections refused or dropped because too many were in the middle of a handshake."}),
		ListenerUp: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "listener_up",
			Help: "1 while a master accepts clones, 0 while its listener fails."}),
		Unreplicable: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "unreplicable_entries_total",
			Help: "Names in the data directory that cannot be replicated (e.g. longer than PATH_MAX); they are skipped and logged."}),
	}
	if reg != nil {
		reg.MustRegister(m.BytesSent, m.FilesSent, m.WireSent, m.LagSeq, m.LagSeconds, m.Ops, m.Unreadable, m.Rescans,
			m.Overflows, m.Cuts, m.SyncTimeouts, m.AuthFailures, m.BytesReceived, m.ApplyErrors, m.Term, m.Seq, m.CaughtUp, m.Healthy, m.Silence,
			m.InitBytes, m.InitBytesTot, m.InitFiles, m.InitFilesTot, m.AcceptErrors, m.PreAuthRefused, m.ListenerUp, m.Unreplicable)
	}
	return m
}
