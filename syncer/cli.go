package syncer

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/core"
)

// DefaultSecretEnv is where the per-job secret is expected, typically a
// Nomad variable rendered into the task's environment.
const DefaultSecretEnv = "BEDROCK_SYNC_SECRET"

// Main is `nomad-driver-bedrock syncer ...`: it runs one syncer with a
// static role from flags until ctx ends. It returns the process exit code:
// 0 after ctx ends, 1 on a runtime error, 2 on bad usage. Logs are hclog
// JSON on stderr; stdout only gets status lines when -status-every is set.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if usesConsul(args) {
		return mainConsul(ctx, args, stderr)
	}
	fs := flag.NewFlagSet("syncer", flag.ContinueOnError)
	fs.SetOutput(stderr)
	data := fs.String("data", "", "data directory to replicate (required)")
	listen := fs.String("listen", "", "address a master accepts clones on, e.g. 0.0.0.0:7400")
	master := fs.String("master", "", "master address; when set this instance is a clone")
	term := fs.Uint64("term", 1, "fencing term of the static role")
	secretEnv := fs.String("secret-env", DefaultSecretEnv, "environment variable holding the shared secret")
	secretFile := fs.String("secret-file", "", "file holding the shared secret (instead of -secret-env)")
	metrics := fs.String("metrics", "", "address for /metrics and /status (optional)")
	id := fs.String("id", "", "instance name in logs and metrics (default: hostname)")
	rescan := fs.Duration("rescan", 30*time.Second, "master's safety-net full rescan interval")
	level := fs.String("log-level", "info", "log level")
	tlsCert := fs.String("tls-cert", "", "PEM certificate for mutual TLS (with -tls-key and -tls-ca)")
	tlsKey := fs.String("tls-key", "", "PEM private key for mutual TLS")
	tlsCA := fs.String("tls-ca", "", "PEM CA bundle that peers' certificates must chain to")
	tlsName := fs.String("tls-server-name", "bedrock-sync", "name the master's certificate must carry")
	statusEvery := fs.Duration("status-every", 0, "print the status as a JSON line on stdout this often (0: never)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: nomad-driver-bedrock syncer -data DIR (-listen ADDR | -master ADDR) [-term N] [-secret-env NAME] [-metrics ADDR]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 0 {
		fmt.Fprintf(stderr, "syncer: unexpected arguments %q\n", fs.Args())
		return 2
	}
	if *data == "" {
		fmt.Fprintln(stderr, "syncer: -data is required")
		return 2
	}
	if *master == "" && *listen == "" {
		fmt.Fprintln(stderr, "syncer: a master needs -listen (or give -master to run as a clone)")
		return 2
	}
	secret, err := readSecret(*secretEnv, *secretFile)
	if err != nil {
		fmt.Fprintf(stderr, "syncer: %v\n", err)
		return 2
	}
	tlsCfg, err := loadTLS(*tlsCert, *tlsKey, *tlsCA, *tlsName)
	if err != nil {
		fmt.Fprintf(stderr, "syncer: %v\n", err)
		return 2
	}
	log := hclog.New(&hclog.LoggerOptions{Name: "syncer", Level: hclog.LevelFromString(*level), JSONFormat: true, Output: stderr})
	role := core.Assignment{Master: *master == "", Term: *term, MasterAddr: *master}
	s, err := New(Config{
		DataDir: *data, ListenAddr: *listen, Secret: []byte(secret), ID: *id, Roles: StaticRole(role),
		MetricsAddr: *metrics, RescanInterval: *rescan, Logger: log, TLS: tlsCfg,
		OnProgress: func(p core.Progress) { log.Info("initial sync progress", "progress", p.String(), "done", p.Done) },
	})
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	if *statusEvery > 0 {
		go func() {
			t := time.NewTicker(*statusEvery)
			defer t.Stop()
			enc := json.NewEncoder(stdout)
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					_ = enc.Encode(s.Status())
				}
			}
		}()
	}
	if err := s.Run(ctx); err != nil {
		log.Error("syncer failed", "error", err)
		return 1
	}
	return 0
}

// readSecret reads the shared secret from file when given (a file in the
// task's secrets dir keeps it out of the container's environment, which
// `docker inspect` shows), else from the environment variable env.
func readSecret(env, file string) (string, error) {
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("reading the shared secret: %w", err)
		}
		secret := strings.TrimRight(string(b), "\r\n")
		if len(secret) < 16 {
			return "", fmt.Errorf("the shared secret in %s must be at least 16 bytes", file)
		}
		return secret, nil
	}
	secret := os.Getenv(env)
	if len(secret) < 16 {
		return "", fmt.Errorf("environment variable %s must hold the shared secret (at least 16 bytes), or give -secret-file", env)
	}
	return secret, nil
}

// loadTLS builds a mutual-TLS config from PEM files; all empty means none.
func loadTLS(certFile, keyFile, caFile, serverName string) (*tls.Config, error) {
	if certFile == "" && keyFile == "" && caFile == "" {
		return nil, nil
	}
	if certFile == "" || keyFile == "" || caFile == "" {
		return nil, errors.New("mutual TLS needs all of -tls-cert, -tls-key and -tls-ca")
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("load TLS key pair: %w", err)
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("read TLS CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("no certificate in %s", caFile)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		RootCAs:      pool,
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ServerName:   serverName,
		MinVersion:   tls.VersionTLS13,
	}, nil
}
