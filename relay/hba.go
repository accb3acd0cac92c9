package relay

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"strings"
)

// Access rules decide, per connection, which authentication method applies,
// as pg_hba.conf does on a server: the first rule whose connection type,
// user and source address match wins, and a connection no rule matches is
// rejected.

// Method is how a matching client must prove who it is.
type Method string

const (
	MethodTrust  Method = "trust"
	MethodSCRAM  Method = "scram-sha-256"
	MethodCert   Method = "cert"
	MethodReject Method = "reject"
)

// Rule is one line of the access rules.
type Rule struct {
	Line    int
	Type    string     // host, hostssl or hostnossl
	Users   []string   // "all" matches everyone
	Network *net.IPNet // nil: all addresses
	Method  Method
}

// Rules is an ordered rule list.
type Rules []Rule

// ParseRules reads rules, one per line: TYPE USERS ADDRESS METHOD, as in
// pg_hba.conf (without the database column: a relay has none), e.g.
//
//	hostssl  all        10.0.0.0/8    scram-sha-256
//	host     replicator 127.0.0.1/32  trust
//	host     all        all           reject
//
// Blank lines and # comments are skipped. Errors name the line.
func ParseRules(name, text string) (Rules, error) {
	var out Rules
	sc := bufio.NewScanner(strings.NewReader(text))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if len(f) != 4 {
			return nil, fmt.Errorf("%s line %d: want TYPE USERS ADDRESS METHOD, got %d fields", name, n, len(f))
		}
		r := Rule{Line: n, Type: f[0], Users: strings.Split(f[1], ","), Method: Method(f[3])}
		switch r.Type {
		case "host", "hostssl", "hostnossl":
		default:
			return nil, fmt.Errorf("%s line %d: connection type %q: want host, hostssl or hostnossl", name, n, f[0])
		}
		switch r.Method {
		case MethodTrust, MethodSCRAM, MethodCert, MethodReject:
		case "md5", "password":
			return nil, fmt.Errorf("%s line %d: method %q is not offered: use scram-sha-256", name, n, f[3])
		default:
			return nil, fmt.Errorf("%s line %d: method %q: want trust, scram-sha-256, cert or reject", name, n, f[3])
		}
		if r.Method == MethodCert && r.Type != "hostssl" {
			return nil, fmt.Errorf("%s line %d: cert authentication is only available for hostssl rules", name, n)
		}
		if f[2] != "all" {
			addr := f[2]
			if !strings.Contains(addr, "/") {
				if ip := net.ParseIP(addr); ip != nil && ip.To4() != nil {
					addr += "/32"
				} else {
					addr += "/128"
				}
			}
			_, nw, err := net.ParseCIDR(addr)
			if err != nil {
				return nil, fmt.Errorf("%s line %d: address %q: want all, an IP address or a CIDR network", name, n, f[2])
			}
			r.Network = nw
		}
		out = append(out, r)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no rules (a relay nobody may connect to is a mistake)", name)
	}
	return out, nil
}

// LoadRules reads a rules file.
func LoadRules(path string) (Rules, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("access rules: %w", err)
	}
	return ParseRules(path, string(b))
}

// Match returns the method of the first rule that matches, or false.
func (rs Rules) Match(user string, remote net.Addr, ssl bool) (Rule, bool) {
	var ip net.IP
	switch a := remote.(type) {
	case *net.TCPAddr:
		ip = a.IP
	case *net.UnixAddr:
		ip = net.IPv4(127, 0, 0, 1)
	}
	for _, r := range rs {
		if (r.Type == "hostssl" && !ssl) || (r.Type == "hostnossl" && ssl) {
			continue
		}
		if r.Network != nil && (ip == nil || !r.Network.Contains(ip)) {
			continue
		}
		for _, u := range r.Users {
			if u == "all" || u == user {
				return r, true
			}
		}
	}
	return Rule{}, false
}

// defaultMethod applies when no rules are configured: with users, SCRAM
// for everyone; without, trust for loopback clients and nobody else.
func defaultMethod(creds *Credentials, remote net.Addr) Method {
	if creds.Len() > 0 {
		return MethodSCRAM
	}
	if isLoopback(remote) {
		return MethodTrust
	}
	return MethodReject
}
