// Package unreached is a Traefik middleware, loaded as a local plugin and run
// by Traefik's Go interpreter (Yaegi), that answers 502 Bad Gateway instead
// of 504 Gateway Timeout when Traefik never got a connection to the backend.
//
// Traefik answers 504 for any timeout, its dial timeout included. A function
// container that has just died stays routed until Traefik applies its `die`
// event, and its address then answers nothing at all: the dial times out.
// That is not a slow function but an unreachable one, so the caller gets a
// 502 like any other refused connection. A 504 after a connection was made
// (the function's own 504, or FAAS_REQUEST_TIMEOUT) passes unchanged.
//
// faas puts it in each function's middleware chain (faas/labels.py), after
// the key check, whose own request to the gateway must not count as one to
// the function, and before retry, so that it sees the last attempt's answer.
package unreached

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"net/http/httptrace"
	"strconv"
)

// Config is empty: the middleware has no options.
type Config struct{}

// CreateConfig is called by Traefik for the middleware's configuration.
func CreateConfig() *Config { return &Config{} }

type unreached struct{ next http.Handler }

// New is called by Traefik to build the middleware.
func New(_ context.Context, next http.Handler, _ *Config, _ string) (http.Handler, error) {
	return &unreached{next: next}, nil
}

func (u *unreached) ServeHTTP(rw http.ResponseWriter, req *http.Request) {
	w := &writer{ResponseWriter: rw}
	// The transport reports every connection it hands the request, new or
	// reused; retry composes its own trace with this one on each attempt.
	trace := &httptrace.ClientTrace{GotConn: w.gotConn}
	u.next.ServeHTTP(w, req.WithContext(httptrace.WithClientTrace(req.Context(), trace)))
}

// The answer instead of Traefik's "Gateway Timeout".
var badGateway = []byte(http.StatusText(http.StatusBadGateway))

// writer turns a 504 into a 502 when no connection was ever made.
//
// Yaegi hands compiled code a wrapper of an interpreted ResponseWriter that
// has the ResponseWriter and Hijacker methods only, never Flush (see the
// callid plugin), so this writer flushes by itself where Traefik's proxy
// would: after the headers and every write of a response of unknown length.
type writer struct {
	http.ResponseWriter
	connected bool // the transport got a connection for some attempt
	wrote     bool
	replaced  bool // the 502 is written; Traefik's 504 text is dropped
	stream    bool
}

// gotConn is called by the transport in the goroutine that serves the request
// (for HTTP/1, which Traefik speaks to functions), before the answer is written.
// A method, not a closure: Yaegi mistypes a closure's argument here.
func (w *writer) gotConn(_ httptrace.GotConnInfo) { w.connected = true }

func (w *writer) WriteHeader(code int) {
	if w.wrote {
		return
	}
	if code == http.StatusGatewayTimeout && !w.connected {
		w.wrote, w.replaced = true, true
		h := w.ResponseWriter.Header()
		h.Set("Content-Type", "text/plain; charset=utf-8")
		h.Set("Content-Length", strconv.Itoa(len(badGateway)))
		w.ResponseWriter.WriteHeader(http.StatusBadGateway)
		_, _ = w.ResponseWriter.Write(badGateway)
		return
	}
	if code >= http.StatusOK {
		w.wrote = true
		w.stream = w.ResponseWriter.Header().Get("Content-Length") == "" &&
			code != http.StatusNoContent && code != http.StatusNotModified
	}
	w.ResponseWriter.WriteHeader(code)
	if w.stream {
		w.flush()
	}
}

func (w *writer) Write(b []byte) (int, error) {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	if w.replaced {
		return len(b), nil
	}
	n, err := w.ResponseWriter.Write(b)
	if w.stream && err == nil {
		w.flush()
	}
	return n, err
}

func (w *writer) flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Hijack lets upgrades (WebSocket) through.
func (w *writer) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return http.NewResponseController(w.ResponseWriter).Hijack()
}
