#!/usr/bin/python3
"""Data of the DNS integration suite (tests/integration/dns_spec.lua), made fresh each run:

    make_dns_data.py OUTDIR

writes OUTDIR/keys/ (new test keys), OUTDIR/zone.conf (unbound local-data with the public
keys, SPF and DMARC records) and OUTDIR/msgs/*.eml, signed here with dkimpy (Debian's
python3-dkim: a signer independent of the libopendkim verifier under test).

Names are under .test (RFC 6761); addresses are documentation ones (RFC 5737, RFC 3849).
The zones that fail on purpose (servfail.test, timeout.test, refused.test) are set up in
unbound.conf by setup-dns.sh.
"""
import base64
import os
import subprocess
import sys

import dkim
import nacl.signing

CRLF = b'\r\n'
SIGNED = [b'from', b'to', b'subject', b'date', b'message-id']


def rsa_key(path, bits=2048):
    subprocess.run(['openssl', 'genrsa', '-out', path, str(bits)], check=True,
                   stderr=subprocess.DEVNULL)
    with open(path, 'rb') as f:
        priv = f.read()
    der = subprocess.run(['openssl', 'rsa', '-in', path, '-pubout', '-outform', 'DER'],
                         check=True, capture_output=True).stdout
    return priv, 'v=DKIM1; k=rsa; p=' + base64.b64encode(der).decode()


def ed_key(path):
    sk = nacl.signing.SigningKey.generate()
    seed = base64.b64encode(sk.encode())
    with open(path, 'wb') as f:
        f.write(seed + b'\n')
    return seed, 'v=DKIM1; k=ed25519; p=' + base64.b64encode(sk.verify_key.encode()).decode()


def txt(name, text, ttl=300):
    """One unbound local-data line; long texts as several <character-string>s."""
    parts = ' '.join('"%s"' % text[i:i + 200] for i in range(0, len(text), 200))
    return "    local-data: '%s. %d IN TXT %s'" % (name, ttl, parts)


def rr(name, rtype, data, ttl=300):
    return "    local-data: '%s. %d IN %s %s'" % (name, ttl, rtype, data)


def message(frm, subject, body, extra=()):
    headers = ['From: ' + frm, 'To: user@receiver.test', 'Subject: ' + subject,
               'Date: Sun, 22 Nov 2026 10:00:00 +0000',
               'Message-ID: <%s@sender.test>' % subject.replace(' ', '-')] + list(extra)
    return (CRLF.join(h.encode() for h in headers) + CRLF + CRLF +
            CRLF.join(b.encode() for b in body) + CRLF)


def sign(msg, selector, domain, key, alg=b'rsa-sha256', length=False):
    return dkim.sign(msg, selector, domain, key, signature_algorithm=alg,
                     canonicalize=(b'relaxed', b'relaxed'), include_headers=SIGNED,
                     length=length) + msg


def main(out):
    keys = os.path.join(out, 'keys')
    msgs = os.path.join(out, 'msgs')
    os.makedirs(keys, exist_ok=True)
    os.makedirs(msgs, exist_ok=True)
    rsa, rsa_rec = rsa_key(os.path.join(keys, 'rsa.pem'))
    esp, esp_rec = rsa_key(os.path.join(keys, 'esp.pem'))
    ed, ed_rec = ed_key(os.path.join(keys, 'ed.seed'))

    zone = [
        # sender.test: the domain whose mail is checked; p=reject.
        rr('sender.test', 'SOA', 'ns.sender.test. hostmaster.sender.test. 1 7200 900 1209600 60'),
        txt('sender.test', 'v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 -all'),
        rr('sender.test', 'A', '192.0.2.1'),
        txt('_dmarc.sender.test', 'v=DMARC1; p=reject; rua=mailto:dmarc@sender.test'),
        txt('rsa._domainkey.sender.test', rsa_rec),
        txt('ed._domainkey.sender.test', ed_rec),
        rr('mail.deep.sender.test', 'A', '192.0.2.2'),
        # esp.test: a sender's service provider signing as itself.
        txt('esp.test', 'v=spf1 ip4:203.0.113.0/24 -all'),
        txt('k1._domainkey.esp.test', esp_rec),
        # brand.test: its DKIM key is delegated by CNAME to saas.test (Zendesk style).
        txt('_dmarc.brand.test', 'v=DMARC1; p=quarantine'),
        rr('s1._domainkey.brand.test', 'CNAME', 's1.domainkey.saas.test.'),
        txt('s1.domainkey.saas.test', rsa_rec),
        # SPF include chain and the RFC 7208 4.6.4 limits.
        txt('inc.test', 'v=spf1 include:_spf.inc.test -all'),
        txt('_spf.inc.test', 'v=spf1 ip4:198.51.100.0/24 ~all'),
        txt('many.test', 'v=spf1 ' + ' '.join('a:h%d.many.test' % i for i in range(1, 12)) +
            ' -all'),
        txt('voids.test', 'v=spf1 a:n1.voids.test a:n2.voids.test a:n3.voids.test -all'),
        txt('spfslow.test', 'v=spf1 include:x.timeout.test -all'),
        # psd=y at a public-suffix-like name: [DISC-6] walk.
        txt('_dmarc.psd.test', 'v=DMARC1; p=reject; psd=y'),
        rr('a.b.psd.test', 'A', '192.0.2.3'),
        # data behind the failing zones never comes back: see setup-dns.sh
    ]
    for i in range(1, 12):
        zone.append(rr('h%d.many.test' % i, 'A', '10.0.0.%d' % i))
    with open(os.path.join(out, 'zone.conf'), 'w') as f:
        f.write('\n'.join(zone) + '\n')

    def write(name, data):
        with open(os.path.join(msgs, name), 'wb') as f:
            f.write(data)

    base = message('Sender <news@sender.test>', 'pass rsa', ['Hello.'])
    write('pass-rsa.eml', sign(base, b'rsa', b'sender.test', rsa))
    write('pass-ed25519.eml',
          sign(message('Sender <news@sender.test>', 'pass ed', ['Hello.']), b'ed',
               b'sender.test', ed, b'ed25519-sha256'))
    multi = message('Sender <news@sender.test>', 'several signatures', ['Hello.'])
    multi = sign(multi, b'k1', b'esp.test', esp)
    multi = sign(multi, b'ed', b'sender.test', ed, b'ed25519-sha256')
    multi = sign(multi, b'rsa', b'sender.test', rsa)
    write('multi.eml', multi)
    broken = sign(message('Sender <news@sender.test>', 'broken body', ['Pay 10 EUR.']), b'rsa',
                  b'sender.test', rsa)
    write('broken-body.eml', broken.replace(b'Pay 10 EUR.', b'Pay 9999 EUR.'))
    # l=: the signature covers the first body only; what is appended is unsigned.
    lmsg = sign(message('Sender <news@sender.test>', 'body length', ['Signed part.']),
                b'rsa', b'sender.test', rsa, length=True)
    write('l-tag.eml', lmsg + b'Appended after signing.' + CRLF)
    # An extra From added after signing (RFC 6376 8.15).
    injected = sign(message('Sender <news@sender.test>', 'injected from', ['Hello.']), b'rsa',
                    b'sender.test', rsa)
    write('injected-from.eml', b'From: Boss <boss@attacker.test>' + CRLF + injected)
    write('cname-key.eml', sign(message('Brand <help@brand.test>', 'cname key', ['Hi.']), b's1',
                                b'brand.test', rsa))
    write('key-servfail.eml', sign(message('Sender <news@sender.test>', 'key servfail',
                                           ['Hi.']), b'k', b'keys.servfail.test', rsa))
    write('key-timeout.eml', sign(message('Sender <news@sender.test>', 'key timeout', ['Hi.']),
                                  b'k', b'keys.timeout.test', rsa))
    write('key-refused.eml', sign(message('Sender <news@sender.test>', 'key refused', ['Hi.']),
                                  b'k', b'keys.refused.test', rsa))
    write('no-key.eml', sign(message('Sender <news@sender.test>', 'no key', ['Hi.']),
                             b'missing', b'sender.test', rsa))
    write('from-servfail.eml', message('Someone <a@servfail.test>', 'policy servfail', ['Hi.']))
    write('from-timeout.eml', message('Someone <a@timeout.test>', 'policy timeout', ['Hi.']))
    write('from-deep.eml', sign(message('Sender <news@mail.deep.sender.test>', 'deep', ['Hi.']),
                                b'rsa', b'sender.test', rsa))
    write('unsigned.eml', message('Sender <news@sender.test>', 'unsigned', ['Hi.']))


if __name__ == '__main__':
    if len(sys.argv) != 2:
        sys.exit('usage: make_dns_data.py OUTDIR')
    main(sys.argv[1])
