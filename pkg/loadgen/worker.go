package loadgen

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"time"
)

// worker is one process's part of a run, seen from the coordinator.
type worker interface {
	progress() Progress
	rampDone() bool
	// rss is the worker process's resident set size now.
	rss() (int64, error)
	// startRSS is its RSS before it allocated anything per connection.
	startRSS() int64
	// pid is the worker's process id; 0 for this process.
	pid() int
	// finish closes the connections and returns the worker's figures;
	// lastSeq is the last sequence published.
	finish(lastSeq int) (*workerResult, error)
}

// localWorker runs in the coordinator's own process.
type localWorker struct{ e *engine }

func (w localWorker) progress() Progress  { return w.e.progress() }
func (w localWorker) rampDone() bool      { return w.e.rampDone() }
func (w localWorker) rss() (int64, error) { return readRSS(0) }
func (w localWorker) startRSS() int64     { return w.e.rssStart }
func (w localWorker) pid() int            { return 0 }
func (w localWorker) finish(lastSeq int) (*workerResult, error) {
	return w.e.shutdown(lastSeq), nil
}
func startLocal(cfg *Config, t *target, sh shard) (worker, error) {
	e, err := newEngine(cfg, t, sh)
	if err != nil {
		return nil, err
	}
	e.start()
	return localWorker{e}, nil
}

// workerSpec is the first line a worker process reads on stdin.
type workerSpec struct {
	Config Config `json:"config"`
	Shard  shard  `json:"shard"`
}

// workerLine is one line a worker process writes on stdout.
type workerLine struct {
	StartRSS int64         `json:"start_rss,omitempty"`
	Progress *Progress     `json:"progress,omitempty"`
	Ramped   bool          `json:"ramped,omitempty"`
	Result   *workerResult `json:"result,omitempty"`
	Error    string        `json:"error,omitempty"`
}

// RunWorker is the body of a worker process: it reads its part of the run
// as one JSON line from in, runs it, reports progress lines on out, and
// on "stop" (or end of input) closes its connections and writes its result.
// The parent is the only reader of out, so nothing else may print there.
func RunWorker(in io.Reader, out io.Writer) error {
	br := bufio.NewReader(in)
	line, err := br.ReadBytes('\n')
	if err != nil {
		return fmt.Errorf("worker: reading spec: %w", err)
	}
	var spec workerSpec
	if err := json.Unmarshal(line, &spec); err != nil {
		return fmt.Errorf("worker: decoding spec: %w", err)
	}
	enc := json.NewEncoder(out)
	var mu sync.Mutex
	emit := func(l workerLine) error {
		mu.Lock()
		defer mu.Unlock()
		return enc.Encode(l)
	}
	cfg := spec.Config
	cfg.setDefaults()
	t, err := parseTarget(cfg.URL)
	if err != nil {
		return errors.Join(err, emit(workerLine{Error: err.Error()}))
	}
	e, err := newEngine(&cfg, t, spec.Shard)
	if err != nil {
		return errors.Join(err, emit(workerLine{Error: err.Error()}))
	}
	if err := emit(workerLine{StartRSS: e.rssStart}); err != nil {
		return fmt.Errorf("worker: writing: %w", err)
	}
	e.start()
	stopped := make(chan struct{})
	lastSeq := cfg.Events - 1
	go func() {
		// Any line, or the parent going away, means stop; a stopLine
		// says what was published.
		line, _ := br.ReadBytes('\n')
		var sl stopLine
		if json.Unmarshal(line, &sl) == nil && sl.LastSeq != nil {
			lastSeq = *sl.LastSeq
		}
		close(stopped)
	}()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-stopped:
			r := e.shutdown(lastSeq)
			return emit(workerLine{Result: r})
		case <-tick.C:
			p := e.progress()
			if err := emit(workerLine{Progress: &p, Ramped: e.rampDone()}); err != nil {
				e.shutdown(lastSeq)
				return fmt.Errorf("worker: writing progress: %w", err)
			}
		}
	}
}

// stopLine is the line that stops a worker process.
type stopLine struct {
	LastSeq *int `json:"last_seq"`
}

// procWorker is a worker process seen from the coordinator.
type procWorker struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser

	mu       sync.Mutex
	last     Progress
	ramped   bool
	start    int64
	result   *workerResult
	err      error
	finished chan struct{} // closed when stdout ended
}

// startProc starts a worker process for sh and waits for its first line.
func startProc(cfg *Config, sh shard, stderr io.Writer) (*procWorker, error) {
	if cfg.WorkerCommand == nil {
		return nil, errors.New("the run needs worker processes but no worker command is configured")
	}
	name, args, env := cfg.WorkerCommand()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("worker stdin: %w", err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("worker stdout: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting worker %s: %w", name, err)
	}
	w := &procWorker{cmd: cmd, stdin: stdin, finished: make(chan struct{})}
	spec, err := json.Marshal(workerSpec{Config: *cfg, Shard: sh})
	if err == nil {
		_, err = stdin.Write(append(spec, '\n'))
	}
	if err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, fmt.Errorf("sending spec to worker %d: %w", cmd.Process.Pid, err)
	}
	started := make(chan struct{})
	go w.read(stdout, started)
	select {
	case <-started:
	case <-w.finished:
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return nil, w.err
	}
	return w, nil
}

// read consumes the worker's stdout lines until it ends.
func (w *procWorker) read(r io.Reader, started chan struct{}) {
	defer close(w.finished)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 256<<20)
	once := sync.OnceFunc(func() { close(started) })
	for sc.Scan() {
		var l workerLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			w.setErr(fmt.Errorf("worker %d: bad line: %w", w.cmd.Process.Pid, err))
			continue
		}
		w.mu.Lock()
		switch {
		case l.Error != "":
			w.err = fmt.Errorf("worker %d: %s", w.cmd.Process.Pid, l.Error)
		case l.Result != nil:
			w.result = l.Result
		case l.Progress != nil:
			w.last, w.ramped = *l.Progress, l.Ramped
		default:
			w.start = l.StartRSS
		}
		w.mu.Unlock()
		once()
	}
	if err := sc.Err(); err != nil {
		w.setErr(fmt.Errorf("worker %d: reading: %w", w.cmd.Process.Pid, err))
	}
}

func (w *procWorker) setErr(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err == nil {
		w.err = err
	}
}

func (w *procWorker) progress() Progress {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.last
}

func (w *procWorker) rampDone() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.ramped || w.err != nil
}

func (w *procWorker) rss() (int64, error) { return readRSS(w.cmd.Process.Pid) }

func (w *procWorker) pid() int { return w.cmd.Process.Pid }

func (w *procWorker) startRSS() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.start
}

// finish tells the worker to stop and waits for its result.
func (w *procWorker) finish(lastSeq int) (*workerResult, error) {
	line, _ := json.Marshal(stopLine{LastSeq: &lastSeq})
	_, _ = w.stdin.Write(append(line, '\n'))
	_ = w.stdin.Close()
	<-w.finished
	werr := w.cmd.Wait()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.result == nil {
		return nil, errors.Join(fmt.Errorf("worker %d ended without a result", w.cmd.Process.Pid), w.err, werr)
	}
	return w.result, nil
}
