"""Build the signed message corpus for the rspamd integration tests.

Run with Debian's /usr/bin/python3 (python3-dkim, an independent DKIM/ARC signer):

    sign.py corpus SRC_DIR OUT_DIR KEY_DIR

Every SRC_DIR/*.eml is written to OUT_DIR with CRLF line ends. Control headers, removed
from the output:
    X-Test-Sign: selector.domain     DKIM-sign with KEY_DIR/selector.domain.pem
    X-Test-Forward: tag              after signing, change the message as a mailing list
                                     would: "[tag] " before the Subject, a footer after
                                     the body (this breaks the DKIM signature)
    X-Test-Arc: selector.domain      then seal an ARC set as that forwarder, over an
                                     Authentication-Results header naming the domain as
                                     authserv-id (the forwarder's own verdict)
    X-Test-Arc-Results: text         the results that Authentication-Results carries
"""

import os
import sys

import dkim

CONTROL = (b'x-test-sign', b'x-test-forward', b'x-test-arc', b'x-test-arc-results')


def split_message(raw):
    """Return (list of (name, raw header bytes incl. CRLF), body bytes)."""
    head, sep, body = raw.partition(b'\r\n\r\n')
    if not sep:
        raise ValueError('message has no header/body separator')
    headers = []
    for line in head.split(b'\r\n'):
        if line[:1] in (b' ', b'\t') and headers:
            name, value = headers[-1]
            headers[-1] = (name, value + line + b'\r\n')
        else:
            name = line.split(b':', 1)[0].strip().lower()
            headers.append((name, line + b'\r\n'))
    return headers, body


def header_value(headers, name):
    for hname, raw in headers:
        if hname == name:
            return raw.split(b':', 1)[1].strip()
    return None


def join_message(headers, body):
    return b''.join(raw for _, raw in headers) + b'\r\n' + body


def load_key(key_dir, ident):
    with open(os.path.join(key_dir, ident.decode() + '.pem'), 'rb') as f:
        return f.read()


def build(raw, key_dir):
    headers, body = split_message(raw)
    sign = header_value(headers, b'x-test-sign')
    forward = header_value(headers, b'x-test-forward')
    arc = header_value(headers, b'x-test-arc')
    arc_results = header_value(headers, b'x-test-arc-results')
    headers = [(n, r) for n, r in headers if n not in CONTROL]
    message = join_message(headers, body)

    if sign:
        selector, domain = sign.split(b'.', 1)
        sig = dkim.sign(message, selector, domain, load_key(key_dir, sign),
                        canonicalize=(b'relaxed', b'relaxed'),
                        include_headers=[b'from', b'to', b'subject', b'date', b'message-id'])
        message = sig + message

    if forward:
        headers, body = split_message(message)
        for i, (name, hraw) in enumerate(headers):
            if name == b'subject':
                value = hraw.split(b':', 1)[1].lstrip()
                headers[i] = (name, b'Subject: [' + forward + b'] ' + value)
        body = body + b'\r\n-- \r\nYou are subscribed to the ' + forward + b' list.\r\n'
        message = join_message(headers, body)

    if arc:
        selector, domain = arc.split(b'.', 1)
        results = arc_results or b'dkim=pass; spf=pass; dmarc=pass'
        message = b'Authentication-Results: ' + domain + b'; ' + results + b'\r\n' + message
        seal = dkim.arc_sign(message, selector, domain, load_key(key_dir, arc), domain)
        message = b''.join(seal) + message

    return message


def corpus(src_dir, out_dir, key_dir):
    os.makedirs(out_dir, exist_ok=True)
    for name in sorted(os.listdir(src_dir)):
        if not name.endswith('.eml'):
            continue
        with open(os.path.join(src_dir, name), 'rb') as f:
            raw = f.read().replace(b'\r\n', b'\n').replace(b'\n', b'\r\n')
        with open(os.path.join(out_dir, name), 'wb') as f:
            f.write(build(raw, key_dir))


def main(argv):
    if len(argv) == 5 and argv[1] == 'corpus':
        corpus(argv[2], argv[3], argv[4])
        return 0
    sys.stderr.write(__doc__)
    return 2


if __name__ == '__main__':
    sys.exit(main(sys.argv))
