package hosts

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"slices"
	"strings"
	"sync"
	"time"
)

// Put writes r to dst on t with mode, through the session's stdin, and
// renames it into place only when the bytes that arrived hash to sum (hex
// SHA-256): never a half-written file under the final name.
func (p *Pool) Put(ctx context.Context, t Target, dst string, mode fs.FileMode, r io.Reader, sum string) error {
	if !validSum(sum) {
		return fmt.Errorf("put %s on %s: sha256 %q is not 64 lowercase hex digits", dst, t, sum)
	}
	return p.Run(ctx, t, WriteFile(dst, mode, sum), Exec{Step: "put", Stdin: r})
}

// Copy describes one artifact to copy from a host to many: the release
// tarball from the build host to every node.
type Copy struct {
	// From is the host that holds the file, at FromPath.
	From     Target
	FromPath string
	// SHA256 is the file's hex SHA-256, known when the build host keeps
	// artifacts content-addressed; empty means FanOut hashes it on From
	// first.
	SHA256 string
	// To are the hosts to write it to, at ToPath, with Mode (0 means 0644).
	To     []Target
	ToPath string
	Mode   fs.FileMode
	// Into, when it has Args, is run on every host of To with the bytes on
	// its stdin, instead of writing them to ToPath: a command that unpacks
	// as it receives (Layout.Receive). It must check SHA256 itself. No
	// destination is skipped then: Into decides what to do with what it
	// holds.
	Into Cmd
	// Parallel bounds the destinations written at once; more destinations
	// take more passes over the source. 0 means 8.
	Parallel int
}

// CopyResult is what FanOut did for one destination.
type CopyResult struct {
	// Target is the destination.
	Target Target
	// Skipped is true when the destination already held the same bytes.
	Skipped bool
	// Bytes is how much was sent to it.
	Bytes int64
	// Duration is how long its copy took (its check, when skipped).
	Duration time.Duration
	// Err says why it does not hold the file; nil when it does.
	Err error
}

// FanOut copies c.From's file to every host of c.To. It reads the file once
// per pass, as the stdout of a cat on the source host, and writes it to
// every destination of the pass at once through their sessions' stdin (each
// writing to a temporary file, verified against the SHA-256, renamed into
// place; or running c.Into). The bytes pass through this process in a small buffer: never
// whole in memory, never on the operator's disk; the slowest destination
// sets the pace. Hosts that already hold a file with that SHA-256 at
// c.ToPath are skipped. A destination that fails is dropped and the others
// go on.
//
// It returns one result per destination, in c.To's order, and an error
// joining the failures (nil when every host holds the file).
func (p *Pool) FanOut(ctx context.Context, c Copy) ([]CopyResult, error) {
	results := make([]CopyResult, len(c.To))
	for i, t := range c.To {
		results[i].Target = t
	}
	failAll := func(err error) ([]CopyResult, error) {
		for i := range results {
			results[i].Err = err
		}
		return results, err
	}
	sum := c.SHA256
	if sum == "" {
		out, err := p.Output(ctx, c.From, Sum(c.FromPath))
		if err != nil {
			return failAll(fmt.Errorf("hash %s on %s: %w", c.FromPath, c.From, err))
		}
		if sum = strings.TrimSpace(string(out)); sum == "" {
			return failAll(fmt.Errorf("hash %s on %s: no such file", c.FromPath, c.From))
		}
	}
	if !validSum(sum) {
		return failAll(fmt.Errorf("copy %s from %s: sha256 %q is not 64 lowercase hex digits", c.FromPath, c.From, sum))
	}
	parallel := c.Parallel
	if parallel <= 0 {
		parallel = 8
	}
	mode := c.Mode
	if mode == 0 {
		mode = 0o644
	}

	// Which destinations need it.
	var need []int
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, parallel)
	for i, t := range c.To {
		if len(c.Into.Args) > 0 {
			need = append(need, i)
			continue
		}
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			start := time.Now()
			out, err := p.Output(ctx, t, Sum(c.ToPath))
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				results[i].Err = fmt.Errorf("check %s on %s: %w", c.ToPath, t, err)
			case strings.TrimSpace(string(out)) == sum:
				results[i].Skipped = true
				results[i].Duration = time.Since(start)
			default:
				need = append(need, i)
			}
		})
	}
	wg.Wait()
	slices.Sort(need)

	for batch := range slices.Chunk(need, parallel) {
		p.fanOutPass(ctx, c, sum, mode, batch, results)
	}
	var errs []error
	for _, r := range results {
		if r.Err != nil {
			errs = append(errs, r.Err)
		}
	}
	return results, errors.Join(errs...)
}

// errDestinationDone ends writes to a destination whose command returned.
var errDestinationDone = errors.New("destination command ended")

// fanOutPass streams the source once to the destinations results[idx].
func (p *Pool) fanOutPass(ctx context.Context, c Copy, sum string, mode fs.FileMode, idx []int, results []CopyResult) {
	fw := &fanWriter{}
	dest := c.Into
	if len(dest.Args) == 0 {
		dest = WriteFile(c.ToPath, mode, sum)
	}
	var wg sync.WaitGroup
	for _, i := range idx {
		pr, pw := io.Pipe()
		fw.dests = append(fw.dests, &fanDest{pw: pw})
		wg.Go(func() {
			start := time.Now()
			err := p.Run(ctx, c.To[i], dest, Exec{Step: "stage", Stdin: pr})
			pr.CloseWithError(errDestinationDone)
			if err != nil {
				err = fmt.Errorf("copy %s from %s: %w", c.FromPath, c.From, err)
			}
			results[i].Err, results[i].Duration = err, time.Since(start)
		})
	}
	srcErr := p.Run(ctx, c.From, Cmd{Args: []string{"cat", "--", fileArg(c.FromPath)}}, Exec{Step: "stage", Stdout: fw})
	for _, d := range fw.dests {
		if srcErr != nil {
			// The destinations see their input end short of the SHA-256
			// and throw it away.
			d.pw.CloseWithError(fmt.Errorf("source: %w", srcErr))
		} else {
			d.pw.Close()
		}
	}
	wg.Wait()
	// A cancelled source returns before its output copy ends; every
	// destination has closed its pipe by now, so that copy cannot block.
	fw.mu.Lock()
	defer fw.mu.Unlock()
	for k, i := range idx {
		results[i].Bytes = fw.dests[k].n
	}
}

// fanWriter writes every chunk to each live destination at once and returns
// when all have taken it, so only one chunk is ever in flight.
type fanWriter struct {
	mu    sync.Mutex // held through each Write
	dests []*fanDest
}

type fanDest struct {
	pw   *io.PipeWriter
	n    int64
	dead bool
}

func (f *fanWriter) Write(b []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var wg sync.WaitGroup
	for _, d := range f.dests {
		if d.dead {
			continue
		}
		wg.Go(func() {
			n, err := d.pw.Write(b)
			d.n += int64(n)
			if err != nil {
				d.dead = true
			}
		})
	}
	wg.Wait()
	for _, d := range f.dests {
		if !d.dead {
			return len(b), nil
		}
	}
	return 0, errors.New("every destination failed")
}

func validSum(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !(s[i] >= '0' && s[i] <= '9' || s[i] >= 'a' && s[i] <= 'f') {
			return false
		}
	}
	return true
}
