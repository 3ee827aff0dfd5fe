// Package callid is a Traefik middleware, loaded as a local plugin and run by
// Traefik's Go interpreter (Yaegi), that gives every request an X-Call-Id: the
// caller's own when it is sane (1-128 of A-Z a-z 0-9 . _ -), else 32 random
// hex digits. The id is set on the request forwarded to the backend and on
// the response to the caller, replacing any the backend sent.
//
// It also answers 502 Bad Gateway instead of 504 Gateway Timeout when Traefik
// never got a connection to the backend. Traefik answers 504 for any timeout,
// its dial timeout included. A function container that has just died stays
// routed until Traefik applies its `die` event, and its address then answers
// nothing at all: the dial times out. That is not a slow function but an
// unreachable one, so the caller gets a 502 like any other refused
// connection. A 504 after a connection was made (the function's own 504, the
// gateway's, or FAAS_REQUEST_TIMEOUT) passes unchanged. Being outermost it
// sees the answer to the last of the retry middleware's attempts.
//
// faas declares it as a middleware of the web entrypoint (traefik/*.yml), so
// every router there, the functions' and the gateway's, passes through it.
// One interpreted middleware doing both costs less than two (docs/operations.md,
// "Warm path budget"): each wraps the response writer in interpreted code.
package callid

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"net"
	"net/http"
	"net/http/httptrace"
	"regexp"
	"strconv"
)

// Header carries the request id both ways.
const Header = "X-Call-Id"

// A caller's id is kept only when it matches; anything else is replaced. The
// gateway (faas/gateway.py) applies the same rule.
var sane = regexp.MustCompile(`^[A-Za-z0-9._-]{1,128}$`)

// Config is empty: the middleware has no options.
type Config struct{}

// CreateConfig is called by Traefik for the middleware's configuration.
func CreateConfig() *Config { return &Config{} }

type callID struct{ next http.Handler }

// New is called by Traefik to build the middleware.
func New(_ context.Context, next http.Handler, _ *Config, _ string) (http.Handler, error) {
	return &callID{next: next}, nil
}

func (c *callID) ServeHTTP(rw http.ResponseWriter, req *http.Request) {
	id := req.Header.Get(Header)
	if !sane.MatchString(id) {
		id = newID()
	}
	req.Header.Set(Header, id)
	w := &writer{ResponseWriter: rw, id: id}
	// The transport reports every connection it hands the request, new or
	// reused; retry composes its own trace with this one on each attempt.
	trace := &httptrace.ClientTrace{GotConn: w.gotConn}
	c.next.ServeHTTP(w, req.WithContext(httptrace.WithClientTrace(req.Context(), trace)))
}

func newID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// writer sets the id on the response as its headers are written, and turns
// a 504 into a 502 when no connection was ever made.
//
// Yaegi hands compiled code a wrapper of an interpreted ResponseWriter that
// has the ResponseWriter and Hijacker methods only, never Flush, so Traefik's
// proxy cannot flush through it and a stream would reach the caller only at
// its end. The writer therefore flushes by itself where the proxy would: after
// the headers and after every write of a response of unknown length.
// Responses with a Content-Length go out as the proxy's buffer fills and at
// their end; one that trickles with a Content-Length loses Traefik's periodic
// flush (every 100 ms), which no function answer here relies on.
type writer struct {
	http.ResponseWriter
	id        string
	connected bool // the transport got a connection for some attempt
	wrote     bool
	replaced  bool // the 502 is written; Traefik's 504 text is dropped
	stream    bool
}

// The answer instead of Traefik's "Gateway Timeout".
var badGateway = []byte(http.StatusText(http.StatusBadGateway))

// gotConn is called by the transport in the goroutine that serves the request
// (for HTTP/1, which Traefik speaks to backends), before the answer is written.
// A method, not a closure: Yaegi mistypes a closure's argument here.
func (w *writer) gotConn(_ httptrace.GotConnInfo) { w.connected = true }

func (w *writer) WriteHeader(code int) {
	if w.wrote {
		return
	}
	if code == http.StatusGatewayTimeout && !w.connected {
		w.wrote, w.replaced = true, true
		h := w.ResponseWriter.Header()
		h.Set(Header, w.id)
		h.Set("Content-Type", "text/plain; charset=utf-8")
		h.Set("Content-Length", strconv.Itoa(len(badGateway)))
		w.ResponseWriter.WriteHeader(http.StatusBadGateway)
		_, _ = w.ResponseWriter.Write(badGateway)
		return
	}
	if code >= http.StatusOK {
		w.wrote = true
		h := w.ResponseWriter.Header()
		h.Set(Header, w.id)
		w.stream = h.Get("Content-Length") == "" &&
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

// Hijack lets upgrades (WebSocket) through. The proxy writes the 101 response
// itself after hijacking, from its ResponseWriter's header map: ours, unless a
// middleware between has a map of its own (retry does; see docs/observability.md).
func (w *writer) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	w.ResponseWriter.Header().Set(Header, w.id)
	return http.NewResponseController(w.ResponseWriter).Hijack()
}
