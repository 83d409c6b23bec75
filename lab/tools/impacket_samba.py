#!/usr/bin/env python3
"""impacket_samba.py <impacket-example.py> [args...]

Runs an unmodified impacket example script (from the venv's bin/) after
applying two small compatibility fixes for a Samba 4.17 (Heimdal KDC) DC.
Both were found in this lab; neither changes what the tool is trying to do.

1. DCSync (secretsdump.py, DRSUAPI IDL_DRSGetNCChanges):
   impacket sends a partial attribute set with a PrefixTableDest lacking the
   trailing "schemaInfo" entry.  Windows accepts that; Samba logs
   "Failed to decode remote prefixMap: WERR_INVALID_PARAMETER" and the tool
   prints "DRSR SessionError: code: 0x0".  Fix (wire-level, one extra entry):
   append a schemaInfo prefix entry (id 0, 0xFF + 20 zero bytes) just before
   the request is marshalled.  Samba needs it only to parse the map.

2. Ticket saving (getTGT.py, getST.py ...):
   Heimdal omits the optional EncKDCRepPart.starttime when it equals authtime;
   impacket's CCache.fromTGT/fromTGS assume it is present and crash with
   'Attempted "__str__" operation on ASN.1 schema object' *after* the
   AS/TGS exchange.  Fix (client-side only, no wire change): an absent
   KerberosTime is read as "now".

3. TGS-REQ (GetUserSPNs -request, smbclient.py -k, any -k use of a TGT):
   impacket's getKerberosTGS() sends the PA-TGS-REQ authenticator without the
   RFC 4120 req-body checksum.  Windows tolerates that; Heimdal answers
   KRB-ERROR 50 KRB_AP_ERR_INAPP_CKSUM.  Fix (wire-level): impacket's own
   function, with the authenticator re-built to carry a keyed checksum of the
   req-body (key usage 6: hmac-sha1-96-aes for AES keys, hmac-md5 for RC4)
   before the request is sent - exactly what MIT/Windows clients send.
   getST.py builds its S4U2self and S4U2proxy requests itself: the same lines are
   added there.  Set DCTAP_NO_TGS_FIX=1 to run without this fix (shows the failure).

4. (dctap lab, optional) DCTAP_SMB_DIALECT=2.1 makes impacket negotiate SMB 2.1 instead
   of SMB 3.  impacket turns on SMB 3 encryption whenever the server offers it (Windows
   and Samba do), which hides every named-pipe RPC call from a network sensor; with 2.1
   the same calls travel signed but readable, as rpcclient and many Windows tools send
   them.  The tool itself is unchanged.

Adapted from the team's reference lab (../shared/adlab/tools/impacket_samba.py).
"""
import datetime
import os
import runpy
import sys

import inspect

from impacket.krb5 import kerberosv5, types
from impacket.dcerpc.v5 import drsuapi

# --- fix 1: schemaInfo entry in GetNCChanges PrefixTableDest ---------------
_OrigGetNCChanges = drsuapi.DRSGetNCChanges


class DRSGetNCChanges(_OrigGetNCChanges):
    __module__ = _OrigGetNCChanges.__module__   # rpcrt looks up ...Response here

    def getData(self, *args, **kwargs):
        try:
            v8 = self['pmsgIn']['V8']
            table = v8['PrefixTableDest']['pPrefixEntry']
            have = any(len(e['prefix']['elements']) == 21 and
                       e['prefix']['elements'][0] == 0xFF for e in table)
            if v8['pPartialAttrSet'] and not have:
                entry = drsuapi.PrefixTableEntry()
                entry['ndx'] = 0
                entry['prefix']['length'] = 21
                entry['prefix']['elements'] = [0xFF] + [0] * 20
                table.append(entry)
                v8['PrefixTableDest']['PrefixCount'] = len(table)
        except Exception as exc:  # never break the real tool
            print('[shim] schemaInfo not added: %r' % exc, file=sys.stderr)
        return _OrigGetNCChanges.getData(self, *args, **kwargs)


drsuapi.DRSGetNCChanges = DRSGetNCChanges

# --- fix 2: optional starttime absent in Heimdal's AS-REP/TGS-REP ----------
_orig_from_asn1 = types.KerberosTime.from_asn1


def _from_asn1(data):
    if hasattr(data, 'hasValue') and not data.hasValue():
        return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    return _orig_from_asn1(data)


types.KerberosTime.from_asn1 = staticmethod(_from_asn1)

# --- fix 3: req-body checksum in the TGS-REQ authenticator ---------------
_CKSUM_FOR_ETYPE = {18: 16, 17: 15, 23: -138}   # etype -> keyed cksumtype
_ANCHOR = "    message = encoder.encode(tgsReq)\n"
_INSERT = """    # [dctap lab shim] add keyed req-body checksum to the authenticator (RFC 4120)
    from impacket.krb5.crypto import make_checksum as _mk
    from impacket.krb5.asn1 import KDC_REQ_BODY as _KRB
    # checksum covers the bare KDC-REQ-BODY SEQUENCE (without the [4] tag)
    _body = encoder.encode(reqBody.clone(tagSet=_KRB.tagSet, cloneValueFlag=True))
    authenticator['cksum'] = noValue
    authenticator['cksum']['cksumtype'] = _CKSUM_FOR_ETYPE[int(cipher.enctype)]
    authenticator['cksum']['checksum'] = _mk(_CKSUM_FOR_ETYPE[int(cipher.enctype)], sessionKey, 6, _body)
    apReq['authenticator']['cipher'] = cipher.encrypt(sessionKey, 7, encoder.encode(authenticator), None)
    tgsReq['padata'][0]['padata-value'] = encoder.encode(apReq)
"""
if os.environ.get('DCTAP_NO_TGS_FIX') != '1':
    _src = inspect.getsource(kerberosv5.getKerberosTGS)
    if _src.count(_ANCHOR) == 1:
        _ns = dict(vars(kerberosv5))
        _ns['_CKSUM_FOR_ETYPE'] = _CKSUM_FOR_ETYPE
        exec(compile(_src.replace(_ANCHOR, _INSERT + _ANCHOR), kerberosv5.__file__, 'exec'), _ns)
        kerberosv5.getKerberosTGS = _ns['getKerberosTGS']
    else:
        print('[shim] getKerberosTGS layout changed; TGS fix NOT applied', file=sys.stderr)

# --- fix 4 (optional): SMB 2.1 instead of encrypted SMB 3 ------------------
if os.environ.get('DCTAP_SMB_DIALECT') == '2.1':
    from impacket import smbconnection
    from impacket.smb3structs import SMB2_DIALECT_21
    _orig_init = smbconnection.SMBConnection.__init__

    def _init(self, *args, **kwargs):
        if kwargs.get('preferredDialect') is None and len(args) < 6:
            kwargs['preferredDialect'] = SMB2_DIALECT_21
        return _orig_init(self, *args, **kwargs)

    smbconnection.SMBConnection.__init__ = _init

# --- run the real script ------------------------------------------------------
if len(sys.argv) < 2:
    sys.exit(__doc__)
script = sys.argv[1]
if not os.path.sep in script:
    script = os.path.join(os.path.dirname(sys.executable), script)
sys.argv = [script] + sys.argv[2:]

# --- fix 3b: the same checksum in getST.py's own S4U2self and S4U2proxy requests ----
# getST builds those TGS-REQs itself, not through getKerberosTGS: the same lines go
# before each of its `message = encoder.encode(tgsReq)` (methods, so indented twice).
if os.path.basename(script) == 'getST.py' and os.environ.get('DCTAP_NO_TGS_FIX') != '1':
    import re
    _text = open(script).read()
    _at = re.compile(r'^( +)message = encoder\.encode\(tgsReq\)\n', re.M)

    def _indented(m):
        # _INSERT is written for one level of indentation; give it the anchor's.
        return ''.join(m.group(1) + line[4:] if line.strip() else line for line in _INSERT.splitlines(True)) + m.group(0)

    if len(_at.findall(_text)) >= 2:
        _code = compile(_at.sub(_indented, _text), script, 'exec')
        exec(_code, {'__name__': '__main__', '__file__': script, '_CKSUM_FOR_ETYPE': _CKSUM_FOR_ETYPE})
        sys.exit(0)
    print('[shim] getST.py layout changed; S4U fix NOT applied', file=sys.stderr)
runpy.run_path(script, run_name='__main__')
