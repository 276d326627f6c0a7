#!/usr/bin/python3
"""A DNS server on loopback that lies, for tests/integration/dns_forge_spec.lua:

    forge_dns.py OUTDIR PORT

Makes fresh keys and signed messages in OUTDIR/msgs/ (python3-dkim), then answers UDP and
TCP on 127.0.0.1:PORT, logging every query to OUTDIR/queries.log as
"PROTO SRCPORT ID NAME TYPE EDNS_PAYLOAD" (payload -1: no EDNS). OUTDIR/ready appears once
it listens.

Every zone below .test (RFC 6761) holds the same data: an SOA and an A record at the apex,
`_dmarc` with "v=DMARC1; p=reject", the keys `k` (RSA 2048) and `big` (RSA 4096) under
_domainkey. What the server does with a TXT question depends on the zone:

    honest.test      answers
    forged-id.test   only a reply with another ID that says p=none
    other-name.test  only a reply with our ID that answers _dmarc.elsewhere.test (empty)
    other-port.test  only the p=none reply, sent from another port
    forged-first.test  the three forgeries above, then the true answer
    truncated.test   over UDP a reply with TC set and no answer; the answer over TCP
    garbage.test     our ID in a header, then bytes that are no DNS message
    notcp.test       closes every TCP connection; over UDP answers when the query's EDNS
                     payload fits the reply, else TC
Elsewhere (honest zones and every other type) a reply too big for the query's payload
(512 without EDNS) is sent with TC set and no answer, as a real server does.
"""
import base64
import os
import socket
import struct
import subprocess
import sys
import threading

import dkim
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.rrset

CRLF = b'\r\n'
ZONES = ['honest', 'forged-id', 'other-name', 'other-port', 'forged-first', 'truncated',
         'garbage', 'notcp']
TTL = 300
LOG_LOCK = threading.Lock()


def rsa_key(path, bits):
    subprocess.run(['openssl', 'genrsa', '-out', path, str(bits)], check=True,
                   stderr=subprocess.DEVNULL)
    with open(path, 'rb') as f:
        priv = f.read()
    der = subprocess.run(['openssl', 'rsa', '-in', path, '-pubout', '-outform', 'DER'],
                         check=True, capture_output=True).stdout
    return priv, 'v=DKIM1; k=rsa; p=' + base64.b64encode(der).decode()


def message(frm, subject):
    headers = ['From: ' + frm, 'To: user@receiver.test', 'Subject: ' + subject,
               'Date: Sun, 22 Nov 2026 10:00:00 +0000',
               'Message-ID: <%s@forge.test>' % subject.replace(' ', '-')]
    return CRLF.join(h.encode() for h in headers) + CRLF + CRLF + b'Hello.' + CRLF


def sign(msg, selector, domain, key):
    return dkim.sign(msg, selector, domain, key, canonicalize=(b'relaxed', b'relaxed'),
                     include_headers=[b'from', b'to', b'subject', b'date', b'message-id']) + msg


def make_data(out):
    """Keys, records and messages; returns {name: [text, ...]} of the TXT records."""
    keys = os.path.join(out, 'keys')
    msgs = os.path.join(out, 'msgs')
    os.makedirs(keys, exist_ok=True)
    os.makedirs(msgs, exist_ok=True)
    k, k_rec = rsa_key(os.path.join(keys, 'k.pem'), 2048)
    big, big_rec = rsa_key(os.path.join(keys, 'big.pem'), 4096)
    txt = {}
    for z in ZONES:
        zone = z + '.test'
        txt['_dmarc.' + zone] = ['v=DMARC1; p=reject']
        txt['k._domainkey.' + zone] = [k_rec]
        txt['big._domainkey.' + zone] = [big_rec]
        for sel, key in ((b'k', k), (b'big', big)):
            name = '%s-%s.eml' % (z, sel.decode())
            msg = sign(message('Boss <boss@%s>' % zone, '%s %s' % (z, sel.decode())), sel,
                       zone.encode(), key)
            with open(os.path.join(msgs, name), 'wb') as f:
                f.write(msg)
        with open(os.path.join(msgs, z + '-unsigned.eml'), 'wb') as f:
            f.write(message('Boss <boss@%s>' % zone, z + ' unsigned'))
    return txt


class Server:
    def __init__(self, out, port, txt):
        self.out = out
        self.port = port
        self.txt = txt
        self.log = open(os.path.join(out, 'queries.log'), 'a', buffering=1)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(('127.0.0.1', port))
        self.other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.other.bind(('127.0.0.1', 0))
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind(('127.0.0.1', port))
        self.tcp.listen(16)

    def note(self, proto, src, q):
        qn = q.question[0] if q.question else None
        with LOG_LOCK:
            self.log.write('%s %d %d %s %s %d\n' % (
                proto, src[1], q.id, qn.name.to_text(omit_final_dot=True).lower() if qn is not None else '-',
                dns.rdatatype.to_text(qn.rdtype) if qn is not None else '-', q.payload if q.edns >= 0 else -1))

    @staticmethod
    def zone_of(name):
        labels = name.to_text(omit_final_dot=True).lower().split('.')
        if len(labels) >= 2 and labels[-1] == 'test':
            return labels[-2]
        return None

    def answer(self, q, txt_override=None):
        """The honest reply to q (a dns.message), without size limits."""
        r = dns.message.make_response(q)
        r.flags |= dns.flags.AA
        qn = q.question[0]
        name = qn.name.to_text(omit_final_dot=True).lower()
        zone = self.zone_of(qn.name)
        known = zone in ZONES and (name == zone + '.test' or name in self.txt)
        if not known:
            r.set_rcode(dns.rcode.NXDOMAIN)
        elif qn.rdtype == dns.rdatatype.TXT and (txt_override or name in self.txt):
            texts = txt_override or self.txt[name]
            for t in texts:
                raw = t.encode()
                parts = [raw[i:i + 255] for i in range(0, len(raw), 255)]
                rd = dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, dns.rdatatype.TXT, parts)
                r.answer.append(dns.rrset.from_rdata(qn.name, TTL, rd))
        elif qn.rdtype == dns.rdatatype.A and name == zone + '.test':
            r.answer.append(dns.rrset.from_text(qn.name, TTL, 'IN', 'A', '192.0.2.1'))
        return r

    @staticmethod
    def fit(q, r, limit):
        """Wire form of r; over limit: TC set and the answer left out."""
        # dnspython would refuse to write more than the request's payload: ask for all.
        wire = r.to_wire(max_size=65535)
        if len(wire) <= limit:
            return wire
        r.answer = []
        r.flags |= dns.flags.TC
        return r.to_wire(max_size=65535)

    @staticmethod
    def udp_limit(q):
        return max(q.payload, 512) if q.edns >= 0 else 512

    def forged_id(self, q):
        r = self.answer(q, ['v=DMARC1; p=none'])
        r.id = (q.id + 1) & 0xffff
        return r.to_wire()

    def other_name(self, q):
        other = dns.message.make_query('_dmarc.elsewhere.test', 'TXT')
        r = dns.message.make_response(other)
        r.id = q.id
        return r.to_wire()

    def on_udp(self, data, src):
        try:
            q = dns.message.from_wire(data)
        except Exception:  # not a query: nothing to say
            return
        self.note('udp', src, q)
        if not q.question:
            return
        qn = q.question[0]
        zone = self.zone_of(qn.name)
        send = lambda wire: self.udp.sendto(wire, src)
        if qn.rdtype != dns.rdatatype.TXT or zone in ('honest', 'notcp'):
            send(self.fit(q, self.answer(q), self.udp_limit(q)))
        elif zone == 'forged-id':
            send(self.forged_id(q))
        elif zone == 'other-name':
            send(self.other_name(q))
        elif zone == 'other-port':
            self.other.sendto(self.fit(q, self.answer(q, ['v=DMARC1; p=none']), 4096), src)
        elif zone == 'forged-first':
            send(self.forged_id(q))
            send(self.other_name(q))
            self.other.sendto(self.fit(q, self.answer(q, ['v=DMARC1; p=none']), 4096), src)
            send(self.fit(q, self.answer(q), self.udp_limit(q)))
        elif zone == 'truncated':
            r = dns.message.make_response(q)
            r.flags |= dns.flags.TC
            send(r.to_wire())
        elif zone == 'garbage':
            send(struct.pack('!HHHHHH', q.id, 0x8180, 1, 1, 0, 0) + b'\x07garbage\xff\xff' * 3)
        else:
            send(self.fit(q, self.answer(q), self.udp_limit(q)))

    def serve_udp(self):
        while True:
            data, src = self.udp.recvfrom(65535)
            try:
                self.on_udp(data, src)
            except Exception as e:  # keep serving; the log says why
                with LOG_LOCK:
                    self.log.write('error %r\n' % (e,))

    def on_tcp(self, conn, src):
        with conn:
            conn.settimeout(5)
            head = conn.recv(2)
            if len(head) < 2:
                return
            n = struct.unpack('!H', head)[0]
            data = b''
            while len(data) < n:
                chunk = conn.recv(n - len(data))
                if not chunk:
                    return
                data += chunk
            q = dns.message.from_wire(data)
            self.note('tcp', src, q)
            if self.zone_of(q.question[0].name) == 'notcp':
                return
            wire = self.answer(q).to_wire(max_size=65535)
            conn.sendall(struct.pack('!H', len(wire)) + wire)

    def serve_tcp(self):
        while True:
            conn, src = self.tcp.accept()
            threading.Thread(target=self.on_tcp, args=(conn, src), daemon=True).start()


def main():
    if len(sys.argv) != 3:
        sys.exit('usage: forge_dns.py OUTDIR PORT')
    out, port = sys.argv[1], int(sys.argv[2])
    os.makedirs(out, exist_ok=True)
    server = Server(out, port, make_data(out))
    threading.Thread(target=server.serve_tcp, daemon=True).start()
    with open(os.path.join(out, 'ready'), 'w') as f:
        f.write('%d\n' % port)
    server.serve_udp()


if __name__ == '__main__':
    main()
