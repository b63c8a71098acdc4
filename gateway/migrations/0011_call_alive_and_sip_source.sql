-- Voice (issue 10 items 00 and 11c).
--
-- `alive_at`: the last moment we knew the call was up — a status change we saw, the AMI
-- session that carried its events last heard from Asterisk, the channel listed by
-- CoreShowChannels. A call whose end nobody observed (it ended while the AMI connection was
-- down, or Asterisk answers "No such channel") ends at this moment, not when we noticed:
-- its talk time and its bill do not include our outage.
--
-- `sip_code_source`: where `sip_code` came from. 'sip' = a SIP response the far end (or the
-- carrier) sent; 'mapped' = the provider's own mapping of the Q.850 cause (Asterisk reports
-- TechCause 480 for cause 19 when nothing answered the INVITE or we stopped the ringing: no
-- 480 ever arrived).
ALTER TABLE calls ADD COLUMN alive_at timestamptz;
ALTER TABLE calls ADD COLUMN sip_code_source text
    CHECK (sip_code_source IN ('sip', 'mapped'));
