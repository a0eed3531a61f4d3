package server

import (
	"context"
	"net"
	"net/http"
	"time"
)

// The limits of the daemon's HTTP server (PRODUCT.md §10): no client, and
// no unauthenticated one least of all, holds a connection or the memory
// behind it for longer than these say.
const (
	// ReadHeaderTimeout bounds reading a request's header.
	ReadHeaderTimeout = 10 * time.Second
	// ReadTimeout bounds reading a whole request, header and body. GitHub
	// gives up on a delivery after 10 s, and the API's bodies are a few
	// bytes, so a request still arriving after this is not a genuine one.
	ReadTimeout = 30 * time.Second
	// WriteTimeout bounds a response, from the end of the request's
	// header: longer than the slowest answer (a rollback's, which waits up
	// to 30 s for the hosts and the deploy's start). The deploy page's live
	// log stream lasts as long as the deploy: it clears this deadline and
	// sets one per write of its own.
	WriteTimeout = 60 * time.Second
	// IdleTimeout is how long a keep-alive connection may wait for its
	// next request before the server closes it.
	IdleTimeout = 60 * time.Second
	// MaxHeaderBytes caps a request's header. GitHub's and the CLI's
	// headers are well under a kilobyte; a browser's with cookies, a few.
	MaxHeaderBytes = 64 << 10
)

// Limits are the bounds of an HTTP server; a zero field takes the constant
// of its name.
type Limits struct {
	ReadHeaderTimeout time.Duration
	ReadTimeout       time.Duration
	WriteTimeout      time.Duration
	IdleTimeout       time.Duration
	MaxHeaderBytes    int
}

// HTTPServer returns the server of h on `listen`, within limits. Requests'
// contexts derive from base, so that cancelling base lets go of long
// responses (live log streams) at shutdown.
func HTTPServer(base context.Context, h http.Handler, limits Limits) *http.Server {
	or := func(d, def time.Duration) time.Duration {
		if d > 0 {
			return d
		}
		return def
	}
	maxHeader := limits.MaxHeaderBytes
	if maxHeader <= 0 {
		maxHeader = MaxHeaderBytes
	}
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: or(limits.ReadHeaderTimeout, ReadHeaderTimeout),
		ReadTimeout:       or(limits.ReadTimeout, ReadTimeout),
		WriteTimeout:      or(limits.WriteTimeout, WriteTimeout),
		IdleTimeout:       or(limits.IdleTimeout, IdleTimeout),
		MaxHeaderBytes:    maxHeader,
		BaseContext:       func(net.Listener) context.Context { return base },
	}
}
