// Package callid is a Traefik middleware, loaded as a local plugin and run by
// Traefik's Go interpreter (Yaegi), that gives every request an X-Call-Id: the
// caller's own when it is sane (1-128 of A-Z a-z 0-9 . _ -), else 32 random
// hex digits. The id is set on the request forwarded to the backend and on
// the response to the caller, replacing any the backend sent.
//
// faas declares it as a middleware of the web entrypoint (traefik/*.yml), so
// every router there, the functions' and the gateway's, passes through it.
package callid

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"net"
	"net/http"
	"regexp"
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
	c.next.ServeHTTP(&writer{ResponseWriter: rw, id: id}, req)
}

func newID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// writer sets the id on the response as its headers are written.
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
	id     string
	wrote  bool
	stream bool
}

func (w *writer) WriteHeader(code int) {
	if w.wrote {
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
