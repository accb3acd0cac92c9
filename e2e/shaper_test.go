package e2e

import (
	"bufio"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"
)

// The link shaper does what the cross-region tests rely on: a round trip
// takes at least twice the one-way delay, bulk bytes never pass faster than
// the cap (shared by the connections through the link), a delay does not
// turn into one round trip per chunk, and the bytes are counted. Only lower
// bounds are asserted: a busy machine can make the shaper slower, never
// faster.
func TestLinkShaper(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var wg sync.WaitGroup
	defer wg.Wait()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() { // echo a line; swallow anything else
				defer wg.Done()
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadBytes('\n')
					if err != nil {
						return
					}
					if len(line) < 100 {
						c.Write(line)
					}
				}
			}()
		}
	}()
	p := startFaultProxy(t, ln.Addr().String())
	const oneWay = 25 * time.Millisecond
	const rate = 20 << 20
	p.SetLatency(oneWay)
	p.SetRate(rate)
	c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", p.Port()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	start := time.Now()
	for i := 0; i < 5; i++ {
		c.Write([]byte("ping\n"))
		if _, err := r.ReadBytes('\n'); err != nil {
			t.Fatal(err)
		}
	}
	rtt := time.Since(start) / 5
	if rtt < 2*oneWay {
		t.Errorf("round trip %v, below twice the one-way delay %v", rtt, oneWay)
	}
	// Two connections share the cap.
	const total = 24 << 20
	start = time.Now()
	var senders sync.WaitGroup
	for i := 0; i < 2; i++ {
		senders.Add(1)
		go func() {
			defer senders.Done()
			s, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", p.Port()))
			if err != nil {
				t.Error(err)
				return
			}
			defer s.Close()
			line := make([]byte, 64<<10)
			for j := range line {
				line[j] = 'x'
			}
			line[len(line)-1] = '\n'
			for sent := 0; sent < total/2; sent += len(line) {
				if _, err := s.Write(line); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	senders.Wait()
	// Wait for the last bytes to leave the proxy.
	deadline := time.Now().Add(10 * time.Second)
	for {
		up, _ := p.Bytes()
		if up >= total+5*5 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	elapsed := time.Since(start)
	up, down := p.Bytes()
	if up < total {
		t.Fatalf("%d bytes through the link, sent %d", up, total)
	}
	if min := time.Duration(float64(total-(64<<10)*2) / rate * float64(time.Second)); elapsed < min {
		t.Errorf("%d bytes passed in %v, faster than the cap allows (%v)", total, elapsed, min)
	}
	t.Logf("round trip %v for %v one way; %d MiB in %v over a %d MiB/s cap (%.1f MiB/s); %d bytes back",
		rtt.Round(time.Millisecond), oneWay, total>>20, elapsed.Round(time.Millisecond), rate>>20, float64(up)/elapsed.Seconds()/(1<<20), down)
}
