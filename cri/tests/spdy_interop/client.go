// Interop peer for berth's SPDY/3.1 implementation, built on
// github.com/moby/spdystream (docker/spdystream), the library Kubernetes'
// SPDY transport (client-go remotecommand / portforward, kubelet's
// streaming server) is built on. Debian: golang-go,
// golang-github-docker-spdystream-dev; build in GOPATH mode, no network:
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o spdy-interop client.go
//
// Modes:
//
//	-mode client -addr HOST:PORT   dial, HTTP/1.1 Upgrade to SPDY/3.1 like
//	    client-go's spdy.RoundTripper, open -streams streams concurrently,
//	    send -size bytes on each, expect them back uppercased, then FIN.
//	-mode server -listen HOST:PORT print "listening ADDR", accept one
//	    upgrade, echo every stream uppercased; open one stream of our own
//	    ("streamtype: server-push") and send a greeting on it.
//	-mode dump    print, as hex, frames written by spdystream's framer
//	    (header blocks compressed with Go's zlib and the SPDY dictionary).
//	-mode decode  read hex frames on stdin, print them as decoded by
//	    spdystream's framer, one line each.
package main

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/moby/spdystream"
	"github.com/moby/spdystream/spdy"
)

// bufConn reads through the bufio.Reader that parsed the HTTP exchange, so
// SPDY frames already buffered behind it are not lost.
type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "FAIL: "+format+"\n", args...)
	os.Exit(1)
}

func payload(n, seed int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte('a' + (i*7+seed)%26)
	}
	return b
}

func runClient(addr string, streams, size, chunk int) {
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		fail("dial: %v", err)
	}
	req, _ := http.NewRequest("POST", "http://"+addr+"/exec/interop", nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "SPDY/3.1")
	req.Header.Set("X-Stream-Protocol-Version", "v4.channel.k8s.io")
	if err := req.Write(conn); err != nil {
		fail("write upgrade request: %v", err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		fail("read upgrade response: %v", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		fail("upgrade: status %d", resp.StatusCode)
	}
	if !strings.EqualFold(resp.Header.Get("Upgrade"), "SPDY/3.1") ||
		!strings.EqualFold(resp.Header.Get("Connection"), "Upgrade") ||
		resp.Header.Get("X-Stream-Protocol-Version") != "v4.channel.k8s.io" {
		fail("upgrade: unexpected headers %v", resp.Header)
	}
	sc, err := spdystream.NewConnection(&bufConn{conn, br}, false)
	if err != nil {
		fail("spdystream: %v", err)
	}
	// client-go refuses server-initiated streams the same way.
	go sc.Serve(spdystream.NoOpStreamHandler)

	if _, err := sc.Ping(); err != nil {
		fail("ping: %v", err)
	}

	var wg sync.WaitGroup
	errs := make(chan string, streams)
	for i := 0; i < streams; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			h := http.Header{}
			h.Set("streamType", fmt.Sprintf("echo-%d", i))
			h.Set("requestID", fmt.Sprint(i))
			h.Set("port", "8080")
			st, err := sc.CreateStream(h, nil, false)
			if err != nil {
				errs <- fmt.Sprintf("stream %d: create: %v", i, err)
				return
			}
			if err := st.WaitTimeout(30 * time.Second); err != nil {
				errs <- fmt.Sprintf("stream %d: no SYN_REPLY: %v", i, err)
				return
			}
			data := payload(size, i)
			go func() {
				// Stream 0 sends everything in one DATA frame (a frame far
				// beyond the 64 KiB window); the others in chunks.
				c := chunk
				if i == 0 {
					c = len(data)
				}
				for off := 0; off < len(data); off += c {
					end := off + c
					if end > len(data) {
						end = len(data)
					}
					if _, err := st.Write(data[off:end]); err != nil {
						errs <- fmt.Sprintf("stream %d: write: %v", i, err)
						return
					}
				}
				st.Close()
			}()
			got, err := io.ReadAll(st)
			if err != nil {
				errs <- fmt.Sprintf("stream %d: read: %v", i, err)
				return
			}
			if !bytes.Equal(got, bytes.ToUpper(data)) {
				errs <- fmt.Sprintf("stream %d: echo mismatch: got %d bytes, want %d", i, len(got), len(data))
				return
			}
			fmt.Printf("stream %d ok %d bytes\n", st.Identifier(), len(got))
		}(i)
	}
	wg.Wait()
	close(errs)
	bad := false
	for e := range errs {
		fmt.Fprintln(os.Stderr, "FAIL:", e)
		bad = true
	}
	if bad {
		os.Exit(1)
	}
	if _, err := sc.Ping(); err != nil {
		fail("ping after transfer: %v", err)
	}
	sc.Close()
	fmt.Println("ok")
}

func runServer(listen string) {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		fail("listen: %v", err)
	}
	fmt.Printf("listening %s\n", ln.Addr())
	os.Stdout.Sync()
	conn, err := ln.Accept()
	if err != nil {
		fail("accept: %v", err)
	}
	br := bufio.NewReader(conn)
	req, err := http.ReadRequest(br)
	if err != nil {
		fail("read upgrade request: %v", err)
	}
	if !strings.EqualFold(req.Header.Get("Upgrade"), "SPDY/3.1") {
		fail("not a SPDY/3.1 upgrade: %v", req.Header)
	}
	io.WriteString(conn, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n")
	sc, err := spdystream.NewConnection(&bufConn{conn, br}, true)
	if err != nil {
		fail("spdystream: %v", err)
	}
	var mu sync.Mutex
	served := 0
	pushed := false
	sc.SetCloseTimeout(5 * time.Second)
	sc.Serve(func(st *spdystream.Stream) {
		if err := st.SendReply(http.Header{}, false); err != nil {
			fail("reply: %v", err)
		}
		mu.Lock()
		push := !pushed
		pushed = true
		mu.Unlock()
		if push {
			go func() {
				h := http.Header{}
				h.Set("streamType", "server-push")
				ps, err := sc.CreateStream(h, nil, false)
				if err != nil {
					fail("server stream: %v", err)
				}
				ps.Write([]byte("hello from spdystream"))
				ps.Close()
			}()
		}
		go func() {
			buf := make([]byte, 40000)
			total := 0
			for {
				n, err := st.Read(buf)
				if n > 0 {
					total += n
					if _, werr := st.Write(bytes.ToUpper(buf[:n])); werr != nil {
						fail("echo write: %v", werr)
					}
				}
				if err == io.EOF {
					break
				}
				if err != nil {
					fail("echo read: %v", err)
				}
			}
			mu.Lock()
			served++
			mu.Unlock()
			fmt.Printf("served stream %d %s %d bytes\n", st.Identifier(), st.Headers().Get("streamType"), total)
			st.Close()
		}()
	})
	mu.Lock()
	defer mu.Unlock()
	fmt.Printf("done %d\n", served)
}

func runDump() {
	var buf bytes.Buffer
	f, err := spdy.NewFramer(&buf, nil)
	if err != nil {
		fail("framer: %v", err)
	}
	h1 := http.Header{}
	h1.Set("streamType", "stdin")
	h1.Set("requestID", "0")
	h1.Set("port", "8080")
	h2 := http.Header{}
	h2.Set("streamType", "stdout")
	h2.Add("X-Multi", "a")
	h2.Add("X-Multi", "b")
	frames := []spdy.Frame{
		&spdy.SynStreamFrame{StreamId: 1, Headers: h1, CFHeader: spdy.ControlFrameHeader{Flags: spdy.ControlFlagFin}},
		&spdy.SynStreamFrame{StreamId: 3, Priority: 2, Headers: h2},
		&spdy.SynReplyFrame{StreamId: 2, Headers: http.Header{}},
		&spdy.DataFrame{StreamId: 3, Flags: spdy.DataFlagFin, Data: []byte("payload")},
	}
	for _, fr := range frames {
		if err := f.WriteFrame(fr); err != nil {
			fail("write frame: %v", err)
		}
	}
	fmt.Println(hex.EncodeToString(buf.Bytes()))
}

func headerLine(h http.Header) string {
	var parts []string
	for k, vs := range h {
		parts = append(parts, k+"="+strings.Join(vs, ","))
	}
	sort.Strings(parts)
	return strings.Join(parts, " ")
}

func runDecode() {
	in, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail("stdin: %v", err)
	}
	raw, err := hex.DecodeString(strings.TrimSpace(string(in)))
	if err != nil {
		fail("hex: %v", err)
	}
	f, err := spdy.NewFramer(io.Discard, bytes.NewReader(raw))
	if err != nil {
		fail("framer: %v", err)
	}
	for {
		fr, err := f.ReadFrame()
		if err == io.EOF {
			break
		}
		if err != nil {
			fail("read frame: %v", err)
		}
		switch x := fr.(type) {
		case *spdy.SynStreamFrame:
			fmt.Printf("SYN_STREAM id=%d assoc=%d pri=%d flags=%d %s\n", x.StreamId, x.AssociatedToStreamId, x.Priority, x.CFHeader.Flags, headerLine(x.Headers))
		case *spdy.SynReplyFrame:
			fmt.Printf("SYN_REPLY id=%d flags=%d %s\n", x.StreamId, x.CFHeader.Flags, headerLine(x.Headers))
		case *spdy.HeadersFrame:
			fmt.Printf("HEADERS id=%d flags=%d %s\n", x.StreamId, x.CFHeader.Flags, headerLine(x.Headers))
		case *spdy.RstStreamFrame:
			fmt.Printf("RST_STREAM id=%d status=%d\n", x.StreamId, x.Status)
		case *spdy.SettingsFrame:
			var parts []string
			for _, v := range x.FlagIdValues {
				parts = append(parts, fmt.Sprintf("%d:%d:%d", v.Flag, v.Id, v.Value))
			}
			fmt.Printf("SETTINGS %s\n", strings.Join(parts, " "))
		case *spdy.PingFrame:
			fmt.Printf("PING id=%d\n", x.Id)
		case *spdy.GoAwayFrame:
			fmt.Printf("GOAWAY last=%d status=%d\n", x.LastGoodStreamId, x.Status)
		case *spdy.WindowUpdateFrame:
			fmt.Printf("WINDOW_UPDATE id=%d delta=%d\n", x.StreamId, x.DeltaWindowSize)
		case *spdy.DataFrame:
			fmt.Printf("DATA id=%d flags=%d %q\n", x.StreamId, x.Flags, x.Data)
		default:
			fmt.Printf("OTHER %T\n", fr)
		}
	}
}

func main() {
	mode := flag.String("mode", "client", "client, server, dump or decode")
	addr := flag.String("addr", "", "client: server address")
	listen := flag.String("listen", "127.0.0.1:0", "server: listen address")
	streams := flag.Int("streams", 4, "client: concurrent streams")
	size := flag.Int("size", 1<<20+12345, "client: bytes per stream")
	chunk := flag.Int("chunk", 32*1024, "client: write size")
	flag.Parse()
	switch *mode {
	case "client":
		runClient(*addr, *streams, *size, *chunk)
	case "server":
		runServer(*listen)
	case "dump":
		runDump()
	case "decode":
		runDecode()
	default:
		fail("unknown mode %q", *mode)
	}
}
