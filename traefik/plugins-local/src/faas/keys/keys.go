// Package keys is a Traefik middleware, loaded as a local plugin and run by
// Traefik's Go interpreter (Yaegi), that checks invoke keys (faas/keys.py) in
// Traefik instead of asking the gateway for every request (forwardAuth).
//
// A key is `fk1.<kid>.<function>.<expires>.<signature>`, the signature the
// HMAC-SHA256 of the rest under the gateway's signing secret, base64url
// without padding. A request passes here when it carries a key (X-Faas-Key,
// else Authorization: Bearer) that is well signed, for the function named in
// the path (/function/<name>[/...]; the router's rule guarantees that shape),
// not expired and not revoked; the key headers are then removed. Everything
// else goes to the gateway's key check (`authUrl`/<name>), exactly as
// forwardAuth would send it, and its answer decides: the refusals (401, 403,
// and 429 for a client locked out after failed keys: faas/throttle.py) and
// their JSON bodies stay the gateway's, and so does the admin token.
//
// The gateway's throttle refuses even a right key from a locked-out client.
// This middleware learns of lockouts from the gateway's answers: after any
// refusal, a client's requests all go to the gateway for `failureWindow`
// seconds (the throttle's window; 0 when it is off) or its Retry-After,
// whichever is longer.
//
// The secret is read from `secretFile` when Traefik builds the middleware;
// until it exists every request goes to the gateway. The revoked kids come in
// the configuration itself (`revoked`): the gateway rewrites the dynamic file
// that declares this middleware (faas/traefik.py, write_keys) when a key is
// revoked, and Traefik, watching that directory, rebuilds its middlewares.
package keys

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Config is set once, in the dynamic configuration (traefik/gateway.yml).
type Config struct {
	SecretFile    string   `json:"secretFile,omitempty"`
	AuthURL       string   `json:"authUrl,omitempty"`
	FailureWindow int      `json:"failureWindow,omitempty"` // seconds
	Revoked       []string `json:"revoked,omitempty"`
}

// CreateConfig is called by Traefik for the middleware's configuration.
func CreateConfig() *Config { return &Config{FailureWindow: 60} }

const (
	prefix      = "/function/"
	maxKeyChars = 256
	maxSuspects = 65536
)

type keys struct {
	next    http.Handler
	config  *Config
	secret  []byte // nil: every request goes to the gateway
	revoked map[string]bool
	// Keys whose signature checked out, so a client's next request with the
	// same key costs a map lookup instead of an HMAC (interpreted code is slow).
	signed  sync.Map // key -> signedKey
	nSigned int64    // entries in signed, atomically
}

// signedKey is what a well-signed key says; scope, expiry and revocation are
// checked at every request.
type signedKey struct {
	kid      string
	function string
	expires  int64 // Unix seconds; 0: never
}

const maxSigned = 10000

// The clients the gateway refused lately, and until when their requests go
// to it. Package state: Traefik builds new middlewares at every configuration
// change (any container start or stop), and the list must outlive them.
var (
	suspectsMu sync.Mutex
	suspects   = map[string]time.Time{}
	nSuspects  int64 // len(suspects), read without the lock
	lastClean  time.Time
	client     = &http.Client{Timeout: 30 * time.Second}
)

// New is called by Traefik to build the middleware.
func New(_ context.Context, next http.Handler, config *Config, _ string) (http.Handler, error) {
	if config.SecretFile == "" || config.AuthURL == "" {
		return nil, errors.New("keys: secretFile and authUrl are required")
	}
	k := &keys{next: next, config: config, revoked: map[string]bool{}}
	if data, err := os.ReadFile(config.SecretFile); err == nil {
		if secret := strings.TrimSpace(string(data)); len(secret) >= 16 {
			k.secret = []byte(secret)
		}
	}
	for _, kid := range config.Revoked {
		k.revoked[kid] = true
	}
	return k, nil
}

func (k *keys) ServeHTTP(rw http.ResponseWriter, req *http.Request) {
	name := functionName(req.URL.Path)
	if k.allowed(name, presented(req.Header)) && !suspect(req.RemoteAddr) {
		dropKeys(req.Header)
		k.next.ServeHTTP(rw, req)
		return
	}
	k.askGateway(rw, req, name)
}

// functionName is <name> of /function/<name>[/...].
func functionName(path string) string {
	if !strings.HasPrefix(path, prefix) {
		return ""
	}
	name := path[len(prefix):]
	if i := strings.IndexByte(name, '/'); i >= 0 {
		name = name[:i]
	}
	return name
}

// presented is the key a caller sent: X-Faas-Key, else Authorization: Bearer.
func presented(h http.Header) string {
	if key := h.Get("X-Faas-Key"); key != "" {
		return strings.TrimSpace(key) // "" for spaces only: no key, as in faas/keys.py
	}
	scheme, value, _ := strings.Cut(h.Get("Authorization"), " ")
	if strings.EqualFold(scheme, "bearer") {
		return strings.TrimSpace(value)
	}
	return ""
}

func dropKeys(h http.Header) {
	h.Del("Authorization")
	h.Del("X-Faas-Key")
}

// allowed is true when `key` may invoke `function` (faas/keys.py, Keys.check).
func (k *keys) allowed(function, key string) bool {
	if key == "" || function == "" {
		return false
	}
	sk, ok := k.lookup(key)
	if !ok {
		return false
	}
	if sk.function != function || k.revoked[sk.kid] {
		return false
	}
	return sk.expires == 0 || sk.expires > time.Now().Unix()
}

// lookup is what a well-signed key says; ok is false for any other key.
func (k *keys) lookup(key string) (signedKey, bool) {
	found, ok := k.signed.Load(key)
	if ok {
		return found.(signedKey), true
	}
	return k.verify(key)
}

// verify checks a key's form and signature, and remembers a good one.
func (k *keys) verify(key string) (signedKey, bool) {
	if k.secret == nil || len(key) > maxKeyChars {
		return signedKey{}, false
	}
	parts := strings.Split(key, ".")
	if len(parts) != 5 || parts[0] != "fk1" {
		return signedKey{}, false
	}
	cut := strings.LastIndexByte(key, '.')
	mac := hmac.New(sha256.New, k.secret)
	mac.Write([]byte(key[:cut]))
	want := base64.RawURLEncoding.EncodeToString(mac.Sum(nil))
	if !hmac.Equal([]byte(want), []byte(key[cut+1:])) {
		return signedKey{}, false
	}
	sk := signedKey{kid: parts[1], function: parts[2]}
	if parts[3] != "0" {
		expires, err := strconv.ParseInt(parts[3], 10, 64)
		if err != nil || expires <= 0 {
			return signedKey{}, false
		}
		sk.expires = expires
	}
	if atomic.AddInt64(&k.nSigned, 1) <= maxSigned {
		k.signed.Store(key, sk)
	}
	return sk, true
}

// clientKey is the address the gateway's throttle counts a client under: an
// IPv6 address's /64, else the address (faas/throttle.py, client_key).
func clientKey(remote string) string {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		host = remote
	}
	ip := net.ParseIP(host)
	if ip == nil {
		return host
	}
	if v4 := ip.To4(); v4 != nil {
		return v4.String()
	}
	mask := net.CIDRMask(64, 128)
	return (&net.IPNet{IP: ip.Mask(mask), Mask: mask}).String()
}

// suspect is true while the gateway wants to see the client's requests.
func suspect(remote string) bool {
	if atomic.LoadInt64(&nSuspects) == 0 {
		return false
	}
	address := clientKey(remote)
	suspectsMu.Lock()
	defer suspectsMu.Unlock()
	until, ok := suspects[address]
	if ok && !time.Now().Before(until) {
		delete(suspects, address)
		atomic.StoreInt64(&nSuspects, int64(len(suspects)))
		return false
	}
	return ok
}

// refused notes that the gateway refused `client`: its requests go to the
// gateway until its failures are forgotten there, or its lockout ends.
func (k *keys) refused(address string, retryAfter string) {
	wait := time.Duration(k.config.FailureWindow) * time.Second
	if secs, err := strconv.Atoi(retryAfter); err == nil && time.Duration(secs)*time.Second > wait {
		wait = time.Duration(secs) * time.Second
	}
	if wait <= 0 {
		return // the throttle is off
	}
	now := time.Now()
	suspectsMu.Lock()
	defer suspectsMu.Unlock()
	if len(suspects) >= maxSuspects || now.Sub(lastClean) > time.Minute {
		for c, until := range suspects {
			if now.After(until) {
				delete(suspects, c)
			}
		}
		lastClean = now
	}
	if len(suspects) < maxSuspects {
		suspects[address] = now.Add(wait)
	}
	atomic.StoreInt64(&nSuspects, int64(len(suspects)))
}

// Headers of the gateway's answer not to copy to the caller's.
var hopHeaders = map[string]bool{"Connection": true, "Content-Length": true, "Transfer-Encoding": true, "Keep-Alive": true}

// askGateway does what forwardAuth did for every request: a GET of
// <authUrl>/<name> with the caller's headers; a 2xx lets the request on
// (without its key headers), anything else is the caller's answer.
func (k *keys) askGateway(rw http.ResponseWriter, req *http.Request, name string) {
	// Not the request's context: the callid middleware traces that one's
	// connections, and a connection to the gateway is none to the function.
	check, err := http.NewRequest(http.MethodGet, k.config.AuthURL+"/"+name, nil)
	if err != nil || name == "" {
		http.Error(rw, http.StatusText(http.StatusInternalServerError), http.StatusInternalServerError)
		return
	}
	check.Header = req.Header.Clone()
	check.Header.Del("Content-Length")
	host, _, splitErr := net.SplitHostPort(req.RemoteAddr)
	if splitErr != nil {
		host = req.RemoteAddr
	}
	// The gateway trusts X-Forwarded-For from loopback, where Traefik is; the
	// entrypoint has already dropped any its own untrusted clients sent.
	if prior := req.Header.Get("X-Forwarded-For"); prior != "" {
		host = prior + ", " + host
	}
	check.Header.Set("X-Forwarded-For", host)
	check.Header.Set("X-Forwarded-Method", req.Method)
	check.Header.Set("X-Forwarded-Uri", req.URL.RequestURI())
	answer, err := client.Do(check)
	if err != nil {
		http.Error(rw, http.StatusText(http.StatusBadGateway), http.StatusBadGateway)
		return
	}
	defer answer.Body.Close()
	if answer.StatusCode >= 200 && answer.StatusCode < 300 {
		_, _ = io.Copy(io.Discard, answer.Body)
		dropKeys(req.Header)
		k.next.ServeHTTP(rw, req)
		return
	}
	k.refused(clientKey(req.RemoteAddr), answer.Header.Get("Retry-After"))
	for key, values := range answer.Header {
		if !hopHeaders[key] {
			rw.Header()[key] = values
		}
	}
	rw.WriteHeader(answer.StatusCode)
	_, _ = io.Copy(rw, io.LimitReader(answer.Body, 1<<16))
}
