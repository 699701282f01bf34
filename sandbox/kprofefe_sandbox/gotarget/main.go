// Command gotarget is a small Go service used as a real profiling target in the
// kprofefe-tasks sandbox: it serves net/http/pprof under a configurable base path
// and keeps every profile type non-empty (CPU, heap, block, mutex, goroutine)
// while staying cheap enough to run several copies on a 2-core machine.
package main

import (
	"crypto/sha256"
	"flag"
	"fmt"
	"log"
	"math"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:6060", "listen address (host:port)")
	path := flag.String("path", "/debug/pprof", "base path of the pprof handlers")
	cpu := flag.Float64("cpu", 0.2, "fraction of one core to keep busy, split across the burner goroutines")
	flag.Parse()

	// Without these the block and mutex profiles stay empty, and a profile
	// registry rejects zero-sample profiles.
	runtime.SetBlockProfileRate(1)
	runtime.SetMutexProfileFraction(1)

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatalf("listen %s: %v", *addr, err)
	}
	startWorkload(*cpu)

	srv := &http.Server{Handler: newMux(*path), ReadHeaderTimeout: 10 * time.Second}
	// The parent waits for this exact line before it sends requests.
	fmt.Printf("listening on %s\n", ln.Addr().String())

	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
		<-sig
		_ = srv.Close()
	}()
	if err := srv.Serve(ln); err != nil && err != http.ErrServerClosed {
		log.Fatalf("serve: %v", err)
	}
}

// newMux mounts the pprof handlers under base. pprof.Index only dispatches
// named profiles under the hard-coded /debug/pprof/ prefix, so the names are
// resolved here to make any base path behave like the default one.
func newMux(base string) *http.ServeMux {
	base = "/" + strings.Trim(base, "/")
	if base == "/" {
		base = ""
	}
	mux := http.NewServeMux()
	mux.HandleFunc(base+"/", func(w http.ResponseWriter, r *http.Request) {
		name := strings.TrimPrefix(r.URL.Path, base+"/")
		switch name {
		case "":
			pprof.Index(w, r)
		case "cmdline":
			pprof.Cmdline(w, r)
		case "profile":
			pprof.Profile(w, r)
		case "symbol":
			pprof.Symbol(w, r)
		case "trace":
			pprof.Trace(w, r)
		default:
			// Unknown names get pprof's own 404 "Unknown profile".
			pprof.Handler(name).ServeHTTP(w, r)
		}
	})
	return mux
}

func startWorkload(cpuFraction float64) {
	const burners = 2
	share := cpuFraction / burners
	go burn(share, hashWork)
	go burn(share, mathWork)
	go allocate()
	go channelPingPong()
	go mutexContention()
	// Parked goroutines give the goroutine profile more than a handful of stacks.
	park := make(chan struct{})
	for i := 0; i < 8; i++ {
		go func() { <-park }()
	}
}

// burn keeps one goroutine busy for share of each 100 ms period, so CPU
// profiles always have samples without saturating a small machine.
func burn(share float64, work func()) {
	const period = 100 * time.Millisecond
	busy := time.Duration(float64(period) * share)
	for {
		start := time.Now()
		for time.Since(start) < busy {
			work()
		}
		time.Sleep(period - time.Since(start))
	}
}

var sink [32]byte

func hashWork() {
	for i := 0; i < 200; i++ {
		sink = sha256.Sum256(sink[:])
	}
}

var fsink float64

func mathWork() {
	x := fsink
	for i := 1; i < 2000; i++ {
		x += math.Sqrt(float64(i)) * math.Sin(float64(i))
	}
	fsink = x / 2000
}

// allocate keeps a rolling window of buffers alive so the heap profile has
// in-use samples, and churns enough garbage for allocs to grow.
func allocate() {
	const keep = 64
	ring := make([][]byte, keep)
	for i := 0; ; i++ {
		buf := make([]byte, 16*1024+i%4096)
		buf[0] = byte(i)
		ring[i%keep] = buf
		if i%8 == 0 {
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// channelPingPong blocks a receiver on an unbuffered channel for a few
// milliseconds per message: real channel blocking for the block profile.
func channelPingPong() {
	ch := make(chan int)
	go func() {
		for v := range ch {
			_ = v
		}
	}()
	for i := 0; ; i++ {
		time.Sleep(5 * time.Millisecond)
		ch <- i
	}
}

// mutexContention has goroutines fight over one lock held for a short while,
// which fills both the mutex profile (on Unlock) and the block profile.
func mutexContention() {
	var mu sync.Mutex
	counter := 0
	for g := 0; g < 3; g++ {
		go func() {
			for {
				mu.Lock()
				counter++
				time.Sleep(time.Millisecond)
				mu.Unlock()
				time.Sleep(2 * time.Millisecond)
			}
		}()
	}
}
