"""A controllable SMTP server for the report delivery tests (aiosmtpd).

usage: report_smtpd.py PORT MAILDIR [CERT KEY [USER:PASSWORD]]

Behaviour by recipient local part:
  tempfail-once@...  451 on the first RCPT for that address, then accepted
  tempfail@...       always 451
  perm@...           always 550
  anything else      accepted
Accepted messages are written to MAILDIR/<n>.eml with the envelope in
MAILDIR/<n>.env ("MAIL FROM\nRCPT TO\nTLS yes|no\n"). With CERT and KEY the
server offers STARTTLS; with USER:PASSWORD as well, AUTH (PLAIN, LOGIN) is
required after STARTTLS. Listens on 127.0.0.1 only; stops on SIGTERM.
"""
import asyncio
import os
import signal
import ssl
import sys
import threading

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class Handler:
    def __init__(self, maildir):
        self.maildir = maildir
        self.seen = {}
        self.count = 0
        self.lock = threading.Lock()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split('@', 1)[0].lower()
        with self.lock:
            n = self.seen.get(address, 0) + 1
            self.seen[address] = n
        if local == 'perm':
            return '550 5.1.1 mailbox unavailable'
        if local == 'tempfail' or (local == 'tempfail-once' and n == 1):
            return '451 4.3.0 try again later'
        envelope.rcpt_tos.append(address)
        return '250 OK'

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.count += 1
            n = self.count
        base = os.path.join(self.maildir, '%d' % n)
        with open(base + '.eml.tmp', 'wb') as f:
            f.write(envelope.original_content or envelope.content)
        tls = 'yes' if session.ssl is not None else 'no'
        with open(base + '.env', 'w') as f:
            f.write('%s\n%s\nTLS %s\n' % (envelope.mail_from, ','.join(envelope.rcpt_tos), tls))
        os.rename(base + '.eml.tmp', base + '.eml')
        return '250 2.0.0 accepted'


def main():
    port = int(sys.argv[1])
    maildir = sys.argv[2]
    os.makedirs(maildir, exist_ok=True)
    kwargs = {}
    if len(sys.argv) > 4:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(sys.argv[3], sys.argv[4])
        kwargs['tls_context'] = ctx
    if len(sys.argv) > 5:
        user, password = sys.argv[5].split(':', 1)

        def authenticator(server, session, envelope, mechanism, auth_data):
            ok = (isinstance(auth_data, LoginPassword)
                  and auth_data.login.decode() == user
                  and auth_data.password.decode() == password)
            return AuthResult(success=ok, handled=False)

        kwargs['authenticator'] = authenticator
        kwargs['auth_required'] = True
    controller = Controller(Handler(maildir), hostname='127.0.0.1', port=port,
                            decode_data=False, **kwargs)
    controller.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    signal.signal(signal.SIGINT, lambda *a: stop.set())
    stop.wait()
    controller.stop()


if __name__ == '__main__':
    main()
