// Command testapp is the small static program inside the images Bedrock's
// tests build locally (no registry is reachable in CI). Each subcommand is
// one behaviour a driver test needs to observe: serving HTTP and writing to
// the data directory, printing its environment or identity, exiting with a
// code, spawning children, reporting signals, using memory until OOM, and
// logging numbered lines.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	cmd, ok := commands[os.Args[1]]
	if !ok {
		usage()
		os.Exit(2)
	}
	os.Exit(cmd(os.Args[2:]))
}

// commands are the test app's subcommands (see usage); each returns the exit code.
var commands = map[string]func(args []string) int{
	"serve":  serve,
	"sleep":  sleep,
	"writer": writer,
	"sqlite": sqliteWriter,
	"ledger": ledgerWriter,
	"env":    func([]string) int { return printEnv() },
	"exit":   exitWith,
	"spawn":  spawn,
	"trap":   trap,
	"oom":    oom,
	"log":    logLines,
	"cat": func([]string) int {
		_, _ = io.Copy(os.Stdout, os.Stdin)
		return 0
	},
	"whoami": func([]string) int {
		wd, _ := os.Getwd()
		host, _ := os.Hostname()
		fmt.Printf("uid=%d gid=%d cwd=%s hostname=%s\n", os.Getuid(), os.Getgid(), wd, host)
		return 0
	},
	"limits": func([]string) int {
		var r syscall.Rlimit
		_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r)
		fmt.Printf("nofile=%d:%d\n", r.Cur, r.Max)
		return 0
	},
}

func usage() {
	fmt.Fprintln(os.Stderr, `usage: testapp COMMAND [args]
  serve [-addr :8080] [-data /data]   HTTP: / ok, /write?name=&content=, /read?name=, /env
  sleep DURATION                      sleep, then exit 0
  writer -consul ADDR -key K -id ID   append term-stamped lines to /data/writes.log and /local/witness.log
  sqlite -consul ADDR -key K -id ID   commit SQLite transactions into /data/app.db, each acknowledged one in /local/witness.log
  ledger -consul ADDR -key K -id ID   commit records to /data/ledger.log and its index ledger.idx, each acknowledged one in /local/witness.log
  env                                 print the environment, sorted
  exit N                              exit with code N
  spawn N                             start N sleeping children, print their pids, wait
  trap [-ignore] [-exit N]            print each signal received; exit N on SIGTERM/SIGINT unless -ignore
  oom MiB                             allocate and touch MiB of memory, 8 MiB at a time
  log N [-every D] [-stderr] [-then sleep|exit]   print "line i" N times
  cat                                 copy stdin to stdout
  whoami                              print uid, gid, cwd, hostname
  limits                              print RLIMIT_NOFILE`)
}

func serve(args []string) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	addr := fs.String("addr", ":8080", "listen address")
	data := fs.String("data", "/data", "data directory")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) { _, _ = fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/write", func(w http.ResponseWriter, r *http.Request) {
		name := filepath.Base(r.URL.Query().Get("name"))
		if err := os.WriteFile(filepath.Join(*data, name), []byte(r.URL.Query().Get("content")), 0o644); err != nil { //nolint:gosec // test app
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		_, _ = fmt.Fprintln(w, "written")
	})
	mux.HandleFunc("/read", func(w http.ResponseWriter, r *http.Request) {
		b, err := os.ReadFile(filepath.Join(*data, filepath.Base(r.URL.Query().Get("name"))))
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		_, _ = w.Write(b) //nolint:gosec // test app echoing its own files
	})
	mux.HandleFunc("/env", func(w http.ResponseWriter, _ *http.Request) {
		env := os.Environ()
		sort.Strings(env)
		_, _ = fmt.Fprintln(w, strings.Join(env, "\n"))
	})
	fmt.Println("serving on", *addr)
	srv := &http.Server{Addr: *addr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		fmt.Fprintln(os.Stderr, "serve:", err)
		return 1
	}
	return 0
}

func sleep(args []string) int {
	d := time.Hour
	if len(args) > 0 {
		var err error
		if d, err = time.ParseDuration(args[0]); err != nil {
			fmt.Fprintln(os.Stderr, "sleep:", err)
			return 2
		}
	}
	time.Sleep(d)
	return 0
}

func printEnv() int {
	env := os.Environ()
	sort.Strings(env)
	for _, e := range env {
		fmt.Println(e)
	}
	return 0
}

func exitWith(args []string) int {
	if len(args) == 0 {
		return 0
	}
	n, err := strconv.Atoi(args[0])
	if err != nil {
		fmt.Fprintln(os.Stderr, "exit:", err)
		return 2
	}
	return n
}

func spawn(args []string) int {
	n := 1
	if len(args) > 0 {
		n, _ = strconv.Atoi(args[0])
	}
	self, err := os.Executable()
	if err != nil {
		self = os.Args[0]
	}
	var cmds []*exec.Cmd
	for i := 0; i < n; i++ {
		c := exec.Command(self, "sleep", "1h") //nolint:gosec // test app
		if err := c.Start(); err != nil {
			fmt.Fprintln(os.Stderr, "spawn:", err)
			return 1
		}
		fmt.Printf("child %d\n", c.Process.Pid)
		cmds = append(cmds, c)
	}
	for _, c := range cmds {
		_ = c.Wait()
	}
	return 0
}

func trap(args []string) int {
	fs := flag.NewFlagSet("trap", flag.ContinueOnError)
	ignore := fs.Bool("ignore", false, "do not exit on SIGTERM/SIGINT")
	code := fs.Int("exit", 0, "exit code on SIGTERM/SIGINT")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ch := make(chan os.Signal, 16)
	signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGQUIT)
	fmt.Println("trapping")
	for s := range ch {
		sig, _ := s.(syscall.Signal)
		fmt.Printf("got %s (%d)\n", unixName(sig), int(sig))
		if !*ignore && (sig == syscall.SIGTERM || sig == syscall.SIGINT) {
			return *code
		}
	}
	return 0
}

func unixName(s syscall.Signal) string {
	switch s {
	case syscall.SIGTERM:
		return "SIGTERM"
	case syscall.SIGINT:
		return "SIGINT"
	case syscall.SIGHUP:
		return "SIGHUP"
	case syscall.SIGUSR1:
		return "SIGUSR1"
	case syscall.SIGUSR2:
		return "SIGUSR2"
	case syscall.SIGQUIT:
		return "SIGQUIT"
	}
	return s.String()
}

func oom(args []string) int {
	mib := 1024
	if len(args) > 0 {
		mib, _ = strconv.Atoi(args[0])
	}
	var hold [][]byte
	for i := 0; i < mib; i += 8 {
		b := make([]byte, 8<<20)
		for j := 0; j < len(b); j += 4096 {
			b[j] = 1
		}
		hold = append(hold, b)
		fmt.Printf("allocated %d MiB\n", i+8)
	}
	fmt.Println("allocated all", len(hold))
	time.Sleep(time.Hour)
	return 0
}

func logLines(args []string) int {
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "log: how many lines?")
		return 2
	}
	n, err := strconv.Atoi(args[0])
	if err != nil {
		fmt.Fprintln(os.Stderr, "log:", err)
		return 2
	}
	fs := flag.NewFlagSet("log", flag.ContinueOnError)
	every := fs.Duration("every", 0, "pause between lines")
	toStderr := fs.Bool("stderr", false, "also print each line to stderr, as \"err i\"")
	then := fs.String("then", "exit", "after the lines: exit or sleep")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	out := bufio.NewWriter(os.Stdout)
	for i := 1; i <= n; i++ {
		fmt.Fprintf(out, "line %d\n", i)
		if *every > 0 || i == n {
			_ = out.Flush()
		}
		if *toStderr {
			fmt.Fprintf(os.Stderr, "err %d\n", i)
		}
		if *every > 0 {
			time.Sleep(*every)
		}
	}
	_ = out.Flush()
	if *then == "sleep" {
		time.Sleep(time.Hour)
	}
	return 0
}
