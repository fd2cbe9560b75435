// peerbench: the load generator benches/compare drives the peer brokers with.
//
// It measures what ferry-bench measures for Ferry, the same way: producers keep at most -window messages
// unacknowledged, latency is from a message's publish to its acknowledgement (HdrHistogram-like exact percentiles
// from the sorted samples), and the result is one JSON object with the same field names.
//
//	-peer redis  Redis Streams, XADD over a hand-written RESP pipeline (one connection per producer); the server's
//	             appendfsync decides durability.
//	-peer nats   NATS JetStream, async publish on a file-store stream (Nats 2.9 acknowledges before any fsync).
//	-peer amqp   RabbitMQ, publisher confirms on a quorum queue (-queue-type quorum: confirmed after the WAL
//	             fdatasync) or a stream (-queue-type stream: confirmed without fsync).
//
// Built from Debian's Go packages only, in GOPATH mode (see benches/compare/run).
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/rand"
	"net"
	"os"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	amqp "github.com/rabbitmq/amqp091-go"
)

type options struct {
	peer      string
	address   string
	producers int
	messages  int
	size      int
	window    int
	queueType string
	name      string
}

// inFlight is one published message: when it was sent, and how to wait for its acknowledgement.
type inFlight struct {
	sent time.Time
	wait func() error
}

// producer publishes messages and returns, per message, a function that blocks until its acknowledgement.
type producer interface {
	publish(payload []byte) (func() error, error)
	close()
}

func main() {
	var o options
	flag.StringVar(&o.peer, "peer", "", "redis | nats | amqp")
	flag.StringVar(&o.address, "address", "", "host:port of the peer")
	flag.IntVar(&o.producers, "producers", 1, "concurrent producers, one connection and one stream/subject/queue each")
	flag.IntVar(&o.messages, "messages", 100000, "messages in total")
	flag.IntVar(&o.size, "size", 100, "payload bytes per message (random bytes)")
	flag.IntVar(&o.window, "window", 100, "unacknowledged messages per producer at most (1 = one in flight)")
	flag.StringVar(&o.queueType, "queue-type", "quorum", "amqp only: quorum | stream")
	flag.StringVar(&o.name, "name", "bench", "stream / queue name prefix")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "peerbench:", err)
		os.Exit(1)
	}
}

func run(o options) error {
	if o.producers < 1 || o.window < 1 || o.messages < o.producers {
		return errors.New("need -producers >= 1, -window >= 1, -messages >= -producers")
	}
	payload := make([]byte, o.size)
	rand.New(rand.NewSource(1)).Read(payload)
	producers := make([]producer, o.producers)
	for i := range producers {
		p, err := connect(o, i)
		if err != nil {
			return fmt.Errorf("producer %d: %w", i, err)
		}
		producers[i] = p
	}
	perProducer := o.messages / o.producers
	latencies := make([][]time.Duration, o.producers)
	errs := make([]error, o.producers)
	var wg sync.WaitGroup
	start := time.Now()
	for i, p := range producers {
		wg.Add(1)
		go func(i int, p producer) {
			defer wg.Done()
			latencies[i], errs[i] = drive(p, payload, perProducer, o.window)
		}(i, p)
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	for i, p := range producers {
		p.close()
		if errs[i] != nil {
			return fmt.Errorf("producer %d: %w", i, errs[i])
		}
	}
	var all []time.Duration
	for _, l := range latencies {
		all = append(all, l...)
	}
	sort.Slice(all, func(a, b int) bool { return all[a] < all[b] })
	ms := func(q float64) float64 {
		i := int(q * float64(len(all)))
		if i >= len(all) {
			i = len(all) - 1
		}
		return float64(all[i].Microseconds()) / 1e3
	}
	total := perProducer * o.producers
	out := map[string]any{
		"peer": o.peer, "queue_type": o.queueType, "messages": total, "seconds": elapsed,
		"messages_per_sec": float64(total) / elapsed, "mb_per_sec": float64(total*o.size) / elapsed / 1e6,
		"p50_ms": ms(0.5), "p99_ms": ms(0.99), "p999_ms": ms(0.999), "max_ms": ms(1),
		"producers": o.producers, "message_size": o.size, "window": o.window,
	}
	return json.NewEncoder(os.Stdout).Encode(out)
}

// drive publishes n messages keeping at most window unacknowledged, the way ferry-bench does.
func drive(p producer, payload []byte, n, window int) ([]time.Duration, error) {
	latencies := make([]time.Duration, 0, n)
	pending := make([]inFlight, 0, window)
	head := 0
	settle := func() error {
		f := pending[head]
		head++
		if err := f.wait(); err != nil {
			return err
		}
		latencies = append(latencies, time.Since(f.sent))
		return nil
	}
	for i := 0; i < n; i++ {
		if len(pending)-head == window {
			if err := settle(); err != nil {
				return nil, err
			}
		}
		if head > 0 && head == len(pending) {
			pending, head = pending[:0], 0
		} else if len(pending) == cap(pending) {
			pending = append(pending[:0], pending[head:]...)
			head = 0
		}
		sent := time.Now()
		wait, err := p.publish(payload)
		if err != nil {
			return nil, err
		}
		pending = append(pending, inFlight{sent, wait})
	}
	for head < len(pending) {
		if err := settle(); err != nil {
			return nil, err
		}
	}
	return latencies, nil
}

func connect(o options, index int) (producer, error) {
	name := fmt.Sprintf("%s-%d", o.name, index)
	switch o.peer {
	case "redis":
		return connectRedis(o.address, name)
	case "nats":
		return connectNats(o.address, name, o.window)
	case "amqp":
		return connectAmqp(o.address, name, o.queueType, o.window)
	}
	return nil, fmt.Errorf("unknown -peer %q", o.peer)
}

// redisProducer pipelines XADD commands on one connection; replies come back in order.
type redisProducer struct {
	conn    net.Conn
	w       *bufio.Writer
	r       *bufio.Reader
	key     string
	replies int // replies read so far
	sent    int // commands written so far
	flushed int // commands on the wire so far
}

func connectRedis(address, key string) (producer, error) {
	conn, err := net.Dial("tcp", address)
	if err != nil {
		return nil, err
	}
	p := &redisProducer{conn: conn, w: bufio.NewWriterSize(conn, 1<<16), r: bufio.NewReaderSize(conn, 1<<16), key: key}
	if err := p.command("DEL", key); err != nil {
		return nil, err
	}
	return p, nil
}

func (p *redisProducer) writeCommand(args ...[]byte) {
	p.w.WriteString("*" + strconv.Itoa(len(args)) + "\r\n")
	for _, a := range args {
		p.w.WriteString("$" + strconv.Itoa(len(a)) + "\r\n")
		p.w.Write(a)
		p.w.WriteString("\r\n")
	}
}

// readReply reads one RESP reply and fails on an error reply.
func (p *redisProducer) readReply() error {
	line, err := p.r.ReadString('\n')
	if err != nil {
		return err
	}
	switch line[0] {
	case '-':
		return errors.New("redis: " + line[1:len(line)-2])
	case '$':
		n, err := strconv.Atoi(line[1 : len(line)-2])
		if err != nil {
			return err
		}
		if n >= 0 {
			_, err = p.r.Discard(n + 2)
		}
		return err
	case '+', ':':
		return nil
	}
	return fmt.Errorf("redis: unexpected reply %q", line)
}

func (p *redisProducer) command(args ...string) error {
	bs := make([][]byte, len(args))
	for i, a := range args {
		bs[i] = []byte(a)
	}
	p.writeCommand(bs...)
	if err := p.w.Flush(); err != nil {
		return err
	}
	return p.readReply()
}

func (p *redisProducer) publish(payload []byte) (func() error, error) {
	p.writeCommand([]byte("XADD"), []byte(p.key), []byte("*"), []byte("v"), payload)
	p.sent++
	mine := p.sent
	// Commands go out when the buffer fills (a pipeline, like redis-benchmark -P), or when a reply is awaited
	// whose command is still buffered.
	return func() error {
		if mine > p.flushed {
			if err := p.w.Flush(); err != nil {
				return err
			}
			p.flushed = p.sent
		}
		for p.replies < mine {
			if err := p.readReply(); err != nil {
				return err
			}
			p.replies++
		}
		return nil
	}, nil
}

func (p *redisProducer) close() { p.conn.Close() }

type natsProducer struct {
	conn    *nats.Conn
	js      nats.JetStreamContext
	subject string
}

func connectNats(address, stream string, window int) (producer, error) {
	conn, err := nats.Connect("nats://" + address)
	if err != nil {
		return nil, err
	}
	js, err := conn.JetStream(nats.PublishAsyncMaxPending(window + 1))
	if err != nil {
		return nil, err
	}
	js.DeleteStream(stream)
	subject := stream + ".m"
	if _, err := js.AddStream(&nats.StreamConfig{Name: stream, Subjects: []string{subject}, Storage: nats.FileStorage}); err != nil {
		return nil, err
	}
	return &natsProducer{conn, js, subject}, nil
}

func (p *natsProducer) publish(payload []byte) (func() error, error) {
	f, err := p.js.PublishAsync(p.subject, payload)
	if err != nil {
		return nil, err
	}
	return func() error {
		select {
		case <-f.Ok():
			return nil
		case err := <-f.Err():
			return err
		case <-time.After(30 * time.Second):
			return errors.New("nats: no acknowledgement within 30 s")
		}
	}, nil
}

func (p *natsProducer) close() {
	p.js.DeleteStream(p.subject[:len(p.subject)-2])
	p.conn.Close()
}

type amqpProducer struct {
	conn     *amqp.Connection
	ch       *amqp.Channel
	queue    string
	confirms chan amqp.Confirmation
}

func connectAmqp(address, queue, queueType string, window int) (producer, error) {
	conn, err := amqp.Dial("amqp://guest:guest@" + address + "/")
	if err != nil {
		return nil, err
	}
	ch, err := conn.Channel()
	if err != nil {
		return nil, err
	}
	ch.QueueDelete(queue, false, false, false)
	if _, err := ch.QueueDeclare(queue, true, false, false, false, amqp.Table{"x-queue-type": queueType}); err != nil {
		return nil, err
	}
	if err := ch.Confirm(false); err != nil {
		return nil, err
	}
	// The library hands confirms out one per delivery tag, in order.
	confirms := ch.NotifyPublish(make(chan amqp.Confirmation, window+16))
	return &amqpProducer{conn, ch, queue, confirms}, nil
}

func (p *amqpProducer) publish(payload []byte) (func() error, error) {
	err := p.ch.Publish("", p.queue, false, false, amqp.Publishing{DeliveryMode: amqp.Persistent, Body: payload})
	if err != nil {
		return nil, err
	}
	return func() error {
		select {
		case c := <-p.confirms:
			if !c.Ack {
				return errors.New("amqp: message nacked")
			}
			return nil
		case <-time.After(30 * time.Second):
			return errors.New("amqp: no confirm within 30 s")
		}
	}, nil
}

func (p *amqpProducer) close() {
	p.ch.QueueDelete(p.queue, false, false, false)
	p.conn.Close()
}
