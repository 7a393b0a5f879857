"""Generate a synthetic customer-support ticket classification dataset.

Each ticket is written for "Nimbus", a fictional smart-home company (cameras,
doorbells, thermostats, a subscription plan and an app), and labelled with one
of five categories: billing, technical, account, feature_request, other.
Tickets are composed from per-label templates, slot fillers (products, order
numbers, amounts, dates, error codes...) and tone wrappers (greetings,
sign-offs, angry openers, rambling context, terse lowercase, occasional
typos), so wording and length vary a lot while the label stays recoverable
from the text. A few templates are deliberately harder (an account ticket that
mentions a payment, a thank-you note about a refund labelled "other", a
feature request about the billing page).

Output is JSONL in the OpenAI chat format, one ticket per line:
{"messages": [system, user=ticket, assistant=label]}.

The output is fully deterministic: every random choice comes from a single
``random.Random(seed)``, the data tables are plain ordered lists, and tickets
are deduplicated by normalised text in generation order. The same --n and
--seed therefore always give a byte-identical file.

Usage:
    python examples/make_support_tickets.py [--n 800] [--seed 0] [--out examples/support_tickets.jsonl]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
from collections import Counter
from pathlib import Path

SYSTEM = (
    "Classify the customer support ticket into exactly one category: "
    "billing, technical, account, feature_request, other. "
    "Answer with the category name only."
)

LABEL_WEIGHTS = {
    "billing": 0.24,
    "technical": 0.26,
    "account": 0.20,
    "feature_request": 0.15,
    "other": 0.15,
}

# Slot fillers. A list is sampled uniformly; a callable receives the RNG.
FILLERS = {
    "device": [
        "Nimbus Cam", "Nimbus Cam Mini", "Nimbus Doorbell", "Nimbus Hub",
        "Nimbus Floodlight Cam", "Nimbus Smart Plug", "Nimbus Thermostat",
        "indoor camera", "doorbell", "outdoor cam", "hub", "Cam Mini",
    ],
    "camera": [
        "Nimbus Cam", "Nimbus Cam Mini", "Floodlight Cam", "doorbell camera",
        "outdoor cam", "garage camera", "baby monitor cam", "front door camera",
    ],
    "app": [
        "the iOS app", "the Android app", "the Nimbus app", "the app",
        "the web dashboard", "the desktop app", "the iPad app",
    ],
    "mobile_app": ["the Nimbus app", "the app", "the latest app"],
    "plan": [
        "Nimbus Plus", "Nimbus Plus Family", "the Pro plan", "the annual plan",
        "the monthly plan", "the Basic plan", "my Plus subscription",
        "the Team plan",
    ],
    "phone": [
        "iPhone 13", "iPhone 15 Pro", "Pixel 7", "Galaxy S22", "OnePlus 11",
        "iPad Air", "Moto G", "Pixel 8a", "Galaxy A54", "old iPhone SE",
    ],
    "order": lambda r: r.choice([
        f"#A{r.randint(10000, 99999)}",
        f"#NB-{r.randint(100000, 999999)}",
        f"#{r.randint(10000000, 99999999)}",
        f"NB{r.randint(1000, 9999)}-{r.choice('ABCDEFGHJKLMNPRSTUVWXYZ')}",
    ]),
    "amount": lambda r: r.choice([
        f"${r.choice([4, 7, 9, 12, 14, 19, 24, 29, 49, 99, 129, 199])}.99",
        f"${r.randint(5, 320)}.{r.choice(['00', '49', '50', '95'])}",
        f"€{r.randint(5, 250)}.{r.choice(['00', '99', '90'])}",
        f"£{r.randint(5, 250)}.{r.choice(['00', '99', '49'])}",
        f"{r.randint(12, 180)} dollars",
    ]),
    "date": lambda r: r.choice([
        "yesterday", "last week", "last Tuesday", "on Monday", "two weeks ago",
        "this morning", "a few days ago", "last month", "over the weekend",
        f"on the {r.choice(['3rd', '9th', '14th', '21st', '28th', '1st'])}",
        f"on {r.choice(['March', 'April', 'June', 'July', 'September', 'November', 'January'])} {r.randint(1, 28)}",
        f"on {r.randint(1, 12):02d}/{r.randint(1, 28):02d}",
    ]),
    "since": [
        "since yesterday", "since Monday", "for three days", "since the last update",
        "for about a week", "since the weekend", "for two days now",
        "since last night", "for a couple of weeks", "since the power cut",
    ],
    "error": [
        "E-104", "error 503", "ERR_TIMEOUT", "code 0x3F2", "E17",
        "'Connection failed (-1009)'", "error 4012", "'Something went wrong'",
        "NET_UNREACHABLE", "error code 22",
    ],
    "version": lambda r: f"{r.randint(3, 6)}.{r.randint(0, 14)}.{r.randint(0, 9)}",
    "percent": lambda r: str(r.choice([12, 25, 37, 45, 50, 60, 72, 88, 95, 99])),
    "num": lambda r: str(r.choice([4, 6, 8, 9, 12, 16])),
    "seats": lambda r: str(r.randint(2, 4)),
    "days": lambda r: r.choice(["three", "four", "five", "six", "ten", "8", "12"]),
    "years": lambda r: r.choice(["two", "three", "five", "six", "2", "4"]),
    "promo": lambda r: r.choice(["SPRING", "WELCOME", "HOLIDAY", "NIMBUS", "SAVE"]) + str(r.choice([10, 15, 20, 25])),
    "name": [
        "Maria", "Tom", "Priya", "Jonas", "Aisha", "Marco", "Lena", "Sam",
        "Yuki", "Daniel", "Fatima", "Greg", "Ines", "Kofi", "Helen", "Raj",
    ],
    "agent": ["Priya", "Tom", "Jonas", "Aisha", "Marco", "Lena", "Chris", "Nadia"],
    "country": [
        "Canada", "Ireland", "Portugal", "New Zealand", "Mexico", "Norway",
        "Singapore", "South Africa", "Iceland", "Chile",
    ],
    "city": ["Leeds", "Austin", "Lyon", "Porto", "Calgary", "Adelaide", "Denver"],
    "company": [
        "Brightpath Realty", "Kestrel Home Services", "Hearthstone Property Group",
        "Oakline Builders", "Bluewater Insurance", "Harbor Lane Rentals",
        "Pinecrest Installers", "Solace Senior Living",
    ],
    "role": [
        "the head of partnerships", "a product manager", "the co-founder",
        "the procurement lead", "a business development manager", "the operations director",
    ],
    "job": [
        "Senior Firmware Engineer", "Customer Support Specialist", "UX Designer",
        "Data Analyst", "Android Developer", "QA Engineer", "Marketing Intern",
    ],
    "relative": ["sister", "neighbour", "son", "colleague", "brother-in-law", "friend"],
    "temp": lambda r: str(r.choice([16, 17, 18, 26, 27, 30, 62, 65, 80, 85])),
}

# Per-label template groups: "full" suits any tone, "calm" any tone but angry,
# "plain" only neutral/polite (spam, praise, inquiries), "short" is for terse
# tickets, and "extras" are optional follow-up sentences.
LABELS = {
    "billing": {
        "full": [
            "I was charged {amount} twice for {plan} this month. Can you refund the duplicate charge?",
            "My card statement shows a charge of {amount} {date} that I don't recognise. What is it for?",
            "I cancelled {plan} {date} but I was still billed {amount}. Please refund it.",
            "Why did my subscription go up from {amount} to {amount2}? Nobody told me about a price change.",
            "I'd like a refund for {plan}. I signed up by mistake and haven't used it at all.",
            "The promo code {promo} didn't apply at checkout and I paid full price for my {device}. Can you credit the difference?",
            "My payment keeps getting declined when I try to renew {plan}, even though the card works everywhere else.",
            "I was supposed to get a free 30-day trial but you charged me {amount} straight away.",
            "I returned my {device} (order {order}) {date} and still haven't received the refund.",
            "I got charged {amount} in a foreign currency and my bank added a conversion fee on top. Why isn't it billed in my local currency?",
            "The receipt for order {order} says {amount}, but my bank shows I actually paid {amount2}.",
            "We're being billed for 5 seats on the Team plan but only {seats} people actually use it.",
            "My refund was approved {date} but the money still isn't back on my card. How long does it usually take?",
            "There's a 'service fee' of {amount} on my latest bill that I never agreed to.",
            "I downgraded to the Basic plan but I'm still being charged the Plus price.",
            "You took {amount} from my account {date} even though my subscription was paused.",
            "My subscription auto-renewed without the reminder email you promised. I want that charge reversed.",
            "PayPal shows a pending payment of {amount} to Nimbus that I did not authorise.",
            "Can you explain my latest statement? There are three separate Nimbus charges and I only own one {device}.",
            "I was charged shipping on order {order} even though the site said delivery was free.",
            "I can log in fine and everything works, I just want to know why my bill is {amount} higher than last month.",
            "The gift card I redeemed {date} isn't showing up as credit on my balance.",
            "I paid for the annual plan upfront but I keep getting charged monthly as well.",
            "My bank flagged a charge of {amount} from you as possible fraud. Can you confirm whether it's legitimate?",
            "I was billed for {plan} after the free trial ended, but I cancelled during the trial.",
            "The price at checkout was {amount} but my card was charged {amount2}. Please correct this.",
            "I was charged for a replacement {device} that was supposed to be covered under warranty.",
        ],
        "calm": [
            "Could you send me an invoice for order {order}? I need it for my expense report.",
            "Please switch me from monthly to annual billing and let me know how the remaining balance is prorated.",
            "How do I update the credit card you bill for {plan}? The old one expired.",
            "Our invoice lists VAT but we're a registered business. Could you reissue it with our VAT number?",
            "Is it possible to pay for the {plan} renewal by bank transfer instead of card?",
            "Is there a student or nonprofit discount available for {plan}?",
            "Requesting copies of all invoices from the last 12 months for our accounting team.",
            "Please cancel my subscription and confirm that I won't be billed again.",
            "What payment methods do you accept for {plan}? I'd rather not use a credit card.",
            "If I cancel {plan} halfway through the year, do I get a prorated refund for the remaining months?",
        ],
        "short": [
            "refund for order {order} please",
            "Double charged again. I want a refund.",
            "need an invoice for the payment {date}",
            "why was I charged {amount} {date}?",
            "cancel my subscription and stop billing me",
            "Charged after cancelling. Want my money back.",
            "Where is my refund for order {order}?",
            "Please send a VAT invoice for {order}.",
            "How much is {plan} per year?",
            "Unknown charge of {amount} on my card.",
            "Charged {amount} for nothing. Explain.",
        ],
        "extras": [
            "My order number is {order} if that helps.",
            "Please reply to the email address on my account, not this one.",
            "I've attached a screenshot of my bank statement.",
            "The last four digits of the card are on the receipt, I can read them out if needed.",
            "I've been on {plan} for {years} years and never had a billing problem before.",
            "Let me know if you need anything else from me to sort this out.",
            "This is the second month in a row this has happened.",
        ],
    },
    "technical": {
        "full": [
            "My {device} keeps going offline every few hours. I've restarted the router and it still drops.",
            "{app} crashes as soon as I open the live view on my {phone}.",
            "The {device} won't connect to Wi-Fi during setup. It gets stuck at {percent}% and then shows {error}.",
            "After the latest firmware update my {camera} stopped recording motion events.",
            "Doorbell notifications arrive five to ten minutes late, which makes the doorbell pretty useless.",
            "Video from my {camera} is choppy and pixelated even though my internet speed is fine.",
            "I get {error} whenever I try to download a clip from {app}.",
            "The {device} has a blinking red light and doesn't respond to the reset button.",
            "Two-way audio isn't working on the doorbell. I can hear the visitor but they can't hear me.",
            "The thermostat isn't following its schedule. It jumps to {temp} degrees at random times.",
            "Cloud recordings haven't uploaded {since}, even though I'm paying for {plan}.",
            "{app} won't load past the splash screen on my {phone}. I've reinstalled it twice.",
            "The battery in my {camera} drains in two days instead of lasting months like advertised.",
            "Night vision on my {camera} just shows a white haze, you can't see anything.",
            "Alexa says my {device} is unresponsive, but it shows as online in {app}.",
            "I can't pair my {device} with the hub. Bluetooth pairing times out every single time.",
            "The web dashboard shows a blank page in Firefox. It works in Chrome, though.",
            "Motion detection keeps triggering on tree shadows even at the lowest sensitivity.",
            "The timestamps on my recordings are off by exactly one hour since the clocks changed.",
            "The firmware update fails at {percent}% with {error} and the {device} reboots.",
            "My smart plug switches itself on and off randomly in the middle of the night.",
            "The API returns a 500 error when I call the /events endpoint with a date filter.",
            "My {device} worked fine for months, but {since} it disconnects whenever the microwave is on.",
            "The door sensor reports the back door as open when it's clearly closed.",
            "Live view audio is out of sync with the video by a couple of seconds.",
            "Geofencing has stopped working. The system no longer arms itself when I leave home.",
            "I replaced my router and now none of my devices come back online, and {app} won't let me re-add them.",
            "The screen goes black when I rotate my {phone} in live view.",
            "Getting {error} in the desktop app after updating to version {version}.",
            "The indoor chime doesn't ring when someone presses the doorbell, although the app gets the alert.",
            "Recorded clips cut off after three seconds, so I never see who actually came to the door.",
            "The billing page in {app} just spins forever and then shows {error}, so I can't even see my plan.",
            "I can log in fine, but the dashboard shows none of my devices and {error} at the top.",
        ],
        "calm": [
            "Is there a way to check the signal strength of my {device}? I suspect the Wi-Fi is the problem.",
            "Which ports does the hub need open? My company network blocks it from connecting.",
        ],
        "short": [
            "{device} offline again. help",
            "app keeps crashing on my {phone}",
            "{error} during setup, what does that mean?",
            "Camera not recording since the update.",
            "Live view won't load at all.",
            "doorbell not ringing but app works fine",
            "firmware update stuck at {percent}%",
            "Wi-Fi setup fails every single time.",
            "{app} frozen on loading screen, help",
            "No sound on live view anymore.",
        ],
        "extras": [
            "I'm using {mobile_app} version {version} on my {phone}.",
            "I've already tried restarting everything and reinstalling the app.",
            "The router is in the same room, so signal shouldn't be a problem.",
            "It's been like this {since}.",
            "I also did a factory reset but nothing changed.",
            "I haven't changed anything in my setup recently.",
            "My other devices on the same network work fine.",
        ],
    },
    "account": {
        "full": [
            "I forgot my password and the reset email never arrives. I've already checked spam.",
            "I got a new phone and lost access to my two-factor codes, so now I'm completely locked out.",
            "I somehow have two accounts, one from the app and one from the website. Can you merge them?",
            "My account was locked after too many login attempts. How long until I can try again?",
            "Someone logged into my account from another country {date}. I've changed my password but please check it.",
            "The verification code text never arrives, so I can't finish signing up.",
            "I changed my email address around the same time I updated my payment card, and now neither email lets me log in.",
            "I get 'account not found' when I sign in with Google, but I definitely signed up with Google.",
            "Please remove my ex-husband's access to our home. He still has a login and can see the cameras.",
            "I was logged out on all my devices {date} and now my password doesn't work.",
            "Signing in with Apple just loops me back to the login screen.",
            "Your system says my email is already in use, but I've never signed up before.",
            "I paid for {plan} last month without any problems, but now I can't remember which email the account is under. Can you help me find it?",
            "The password reset link says it has expired even though I clicked it straight away.",
            "I received a 'new sign-in' alert from a device I don't own. Is my account compromised?",
            "My daughter set up the account with her email address. Can we switch it to mine?",
            "I invited my partner as a member but she never got the invite and doesn't show up under Members.",
            "My username still shows my old surname after I got married. How do I change it?",
            "I can log in on the website but {app} keeps saying my credentials are invalid.",
            "I set up two-factor authentication with my old number and I no longer have that phone.",
            "Every time I log in it asks me to verify my email again, even though I already verified it.",
            "Someone changed the email on my account without my permission and I can't get back in.",
            "I want to update my payment details but I can't get into my account because the login code never arrives.",
        ],
        "calm": [
            "How do I change the email address on my account? I'm moving away from my old work address.",
            "Please delete my account and all the data associated with it.",
            "How do I add my partner as a user so she can see the cameras too?",
            "I'm moving out and want to transfer ownership of the home to my landlord. How does that work?",
            "How can I download a copy of all the personal data you hold about me?",
            "My father passed away recently and had an account with you. How do we close it?",
            "I'd like to turn off two-factor authentication. Is that possible?",
            "I need to change the name on the account from my own name to my company's name.",
            "Please unlink my Amazon account from my Nimbus login.",
            "Can I deactivate my account temporarily while I'm abroad, rather than deleting it?",
            "How do I reset my security questions?",
        ],
        "short": [
            "can't log in to my account",
            "password reset email never comes",
            "Please delete my account permanently.",
            "locked out, lost my 2FA phone",
            "how do I change my account email?",
            "Merge my two accounts please, thanks.",
            "Locked out of my account again.",
            "Remove a former user from my home.",
            "reset link expired, still can't sign in",
        ],
        "extras": [
            "The account is under my maiden name, if that matters.",
            "I can verify my identity with my order number {order}.",
            "The account email is my old work address.",
            "Please tell me what information you need to verify it's me.",
            "There are {num} cameras linked to this account.",
            "I don't have access to my old email anymore.",
        ],
    },
    "feature_request": {
        "full": [
            "It's frustrating that there's no way to bulk delete old recordings. Please add one.",
            "Will you ever offer local storage so I don't have to depend on the cloud?",
            "Can you support more than {num} cameras on one screen? We have a larger property.",
            "Why can't I set quiet hours for notifications? Every other app has this.",
            "Please let us use an authenticator app for two-factor instead of SMS only.",
            "Please bring back the grid view that was removed in the last update, or at least make it optional.",
            "Add an option to turn off the status light on the {device}. It reflects in the window at night.",
            "It's a shame the {device} can't be set up without a smartphone. A web-based setup would help a lot.",
            "Honestly the app is missing a basic feature: letting me rename activity zones instead of Zone 1, Zone 2.",
            "How is there still no dark mode in {app}? Please just add one.",
            "I can't believe there's still no way to share a clip with a link. Add it already.",
            "Every competitor has package detection by now. When are you adding it?",
            "Google Home support for the {device} is long overdue. Right now it only works with Alexa.",
        ],
        "calm": [
            "It would be great if {app} had a dark mode. The bright screen is harsh at night.",
            "Please add an option to export all clips from a day in one go instead of one by one.",
            "I'd love to be able to set different motion zones for day and night.",
            "I'd happily pay extra for {plan} if it included person versus package detection.",
            "Suggestion for the billing page: show the next charge date right on the dashboard.",
            "A feature to snooze notifications from one camera for an hour would be really handy.",
            "Suggestion: let us share a single camera with a guest without giving access to the whole home.",
            "Please make it possible to schedule the smart plug by sunrise and sunset.",
            "A desktop notification option for the web dashboard would be really helpful.",
            "Feature idea: an away mode that turns lights on at random so the house looks occupied.",
            "Please add Apple Watch support so I can see who's at the door from my wrist.",
            "Could the app show a history graph of indoor temperature over the past month?",
            "Let us pick a custom notification sound for each device, please.",
            "It would help to have a Spanish language option in the app for my parents.",
            "Could you add a way to tag clips, like 'delivery' or 'visitor', and search by tag?",
            "Would love multi-user permission levels, like admin and viewer.",
            "Being able to download monthly activity reports as CSV would save me a lot of time.",
            "Could the doorbell play a custom pre-recorded message when I don't answer?",
            "It'd be neat if the thermostat could learn my schedule automatically.",
            "Please consider an accessibility mode with larger buttons for older users.",
            "Could you add a home screen widget that shows the thermostat temperature?",
        ],
        "plain": [
            "Please provide webhooks or a public API so we can pipe events into our building management system.",
        ],
        "short": [
            "Please add dark mode to the app.",
            "feature request: bulk export of clips",
            "Need Google Home support for the {device}.",
            "add custom notification sounds please",
            "Any plans for an Apple Watch app?",
            "would love a home screen widget",
            "Suggestion: let me rename activity zones.",
            "please add a landscape mode for tablets",
        ],
        "extras": [
            "I think a lot of users would appreciate this.",
            "A competitor I used before had this and I really miss it.",
            "I'd even be happy to beta test it.",
            "It doesn't have to be fancy, a simple toggle in settings would do.",
            "I'm using {mobile_app} on my {phone} most of the time.",
            "I use the {device} every day, so this would make a real difference.",
        ],
    },
    "other": {
        "full": [
            "When will order {order} ship? It has said 'processing' for {days} days.",
            "My package for order {order} was delivered to the wrong address according to the tracking.",
            "Tracking for order {order} hasn't updated in {days} days. Is it lost?",
            "The courier left the box out in the rain, though the {device} inside seems fine.",
            "Can I change the delivery address for order {order} before it ships?",
            "I think I received someone else's parcel. It has your logo on it but a different name.",
            "The delivery driver said order {order} was handed to me but I never got it. Who do I contact about that?",
        ],
        "calm": [
            "Do you ship to {country}? I'd like to buy a {device} as a gift.",
            "Are your products sold in physical stores, or only online?",
            "Can I recycle my old {device} through you, or should I take it somewhere else?",
            "What are your customer service hours on weekends?",
            "Can I visit a showroom to see the cameras in person before buying?",
            "Do you publish a sustainability report or any information about the materials in your devices?",
        ],
        "plain": [
            "Just wanted to say {agent} from your support team was fantastic {date}. Thank you!",
            "I love my {device}! Best purchase I've made this year.",
            "Our school is running a raffle fundraiser and wondered if you'd donate a {device} as a prize.",
            "Thank you for the quick refund last week, I really appreciated how smooth the process was!",
            "Do you sponsor local events? We're organising a charity 5k in {city}.",
            "Just set up my {device} and it took five minutes. Honestly the easiest install I've ever done.",
            "Is Nimbus a publicly traded company? I'm curious about investing.",
            "Just wanted to say the new invoice layout is much clearer. Nice work!",
            "I run a YouTube channel reviewing security cameras. Would you send a {camera} for an honest review?",
            "I'm {role} at {company} and we'd love to explore a partnership with Nimbus. Who should I talk to?",
            "I'm interested in the {job} position on your careers page. Where can I send my CV?",
            "Congratulations! Your website has been selected for a FREE SEO audit. Reply now to claim your spot.",
            "We offer cheap backlinks and guaranteed first-page Google ranking. Interested? Reply for a price list.",
            "I'm a journalist writing a piece on smart home security. Could someone from your team comment?",
            "Is there a way to become a certified installer for your products?",
            "I'm a student doing a project on smart home companies. Could I interview one of your engineers?",
            "Just checking whether you're hiring interns this summer.",
            "Where is your head office? I'd like to send a letter.",
            "Dear friend, I am a business man with a proposal of mutual benefit. Kindly reply for details.",
            "We're a distributor in {country} and would like to stock your products. What are your wholesale terms?",
            "Your team's talk at the smart home expo was really insightful. Keep up the great work!",
            "We're a property management firm and want a quote for installing doorbells in {num} buildings.",
            "Our agency produces explainer videos for tech brands. Would you be open to a quick call next week?",
            "I would like to apply for any open position in your warehouse. I have {years} years of experience.",
        ],
        "short": [
            "When will order {order} ship?",
            "Do you ship to {country}?",
            "Love the product, great job team!",
            "are you hiring? I'd like to apply",
            "Cheap SEO services, reply for prices!!",
            "Tracking for {order} not updating.",
            "Where's my package? Order {order}.",
            "Your support team rocks, thank you!",
        ],
        "extras": [
            "No rush on this.",
            "Happy to provide more details if needed.",
            "Looking forward to hearing from you.",
            "Feel free to pass this on to the right team.",
        ],
    },
}

GREETINGS = [
    "Hi,", "Hello,", "Hi there,", "Hello Nimbus team,", "Good morning,", "Hey,",
    "Dear Support,", "To whom it may concern,", "Hi support,", "Good afternoon,",
    "Hey guys,",
]
POLITE_SIGNOFFS = [
    "Thanks,", "Thank you!", "Thanks in advance.", "Cheers,", "Best regards,",
    "Kind regards,", "Many thanks,", "Thanks so much for your help.",
    "Appreciate it.", "Thank you for your time.",
]
ANGRY_OPENERS = [
    "This is ridiculous.", "I'm honestly fed up.", "Third time writing about this!!",
    "Unbelievable.", "I am extremely frustrated.", "Not happy at all.",
    "Seriously??", "What is going on with you people?",
]
ANGRY_CLOSERS = [
    "Fix it.", "I expect an answer today.", "Seriously considering switching to another brand.",
    "Very disappointed.", "Worst customer experience I've had in years.",
    "Sort this out ASAP.", "Don't send me another canned reply.",
    "I want this resolved NOW.",
]
RAMBLE_CONTEXT = [
    "I've been a customer for about {years} years and this is the first time I've had to contact you.",
    "I'm not very technical, so please bear with me.",
    "I already looked through the help center articles but none of them covered this.",
    "Sorry if this is the wrong place to ask.",
    "My {relative} recommended your products, which is why I bought them in the first place.",
    "I have a {device} and a {device2} at home, both bought about a year ago.",
    "I'm on {plan}, if that matters.",
    "I'm writing from work so I might be slow to reply.",
    "I tried the chat earlier but it kept disconnecting, so I'm emailing instead.",
    "We just moved into a new house and set everything up again last month.",
    "Long time user, mostly happy, but there's one thing I have to raise.",
]
RAMBLE_LEADS = ["Anyway, ", "So, ", "Long story short, ", "So basically ", "Basically "]
SIGNATURE_TAILS = ["\n\nSent from my iPhone", "\n\nSent from my phone"]

TONE_GROUPS = {"neutral": ("calm", "plain"), "polite": ("calm", "plain"), "rambling": ("calm",), "angry": ()}
TONE_WEIGHTS = {"terse": 0.18, "neutral": 0.30, "polite": 0.24, "angry": 0.12, "rambling": 0.16}
NO_LEAD = {"Honestly", "Suggestion:", "Feature"}
KEEP_CAPITAL = {"I", "I'm", "I've", "I'd", "I'll", "Alexa", "PayPal", "Nimbus", "Google", "Apple", "Amazon"}
ABBREVIATIONS = {"please": "pls", "thanks": "thx", "you": "u", "your": "ur", "because": "bc", "account": "acct"}
SLOT = re.compile(r"\{(\w+)\}")
MIN_WORDS, MAX_WORDS = 5, 85


def higher_amount(rng: random.Random, reference: str) -> str:
    """An amount 10-60% above `reference`, written in the same currency notation."""
    value = float(re.search(r"\d+(?:\.\d+)?", reference).group()) * rng.uniform(1.1, 1.6)
    if reference.endswith("dollars"):
        return f"{round(value)} dollars"
    return f"{reference[0]}{math.floor(value)}.{rng.choice(['00', '49', '99'])}"


def fill(rng: random.Random, template: str, chosen: dict[str, str]) -> str:
    """Replace {slot}s; a slot reused in one ticket keeps its value, and slotX2 differs from slotX."""

    def draw(key: str) -> str:
        if key == "amount2":
            return higher_amount(rng, chosen["amount"])
        source = FILLERS[key.rstrip("2")]
        return source(rng) if callable(source) else rng.choice(source)

    def replace(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in chosen:
            value = draw(key)
            while key.endswith("2") and value == chosen.get(key[:-1]):
                value = draw(key)
            chosen[key] = value
        return chosen[key]

    return SLOT.sub(replace, template)


def add_typos(rng: random.Random, text: str, count: int) -> str:
    words = text.split(" ")
    candidates = [i for i, w in enumerate(words) if len(w) >= 4 and w.isalpha()]
    for i in rng.sample(candidates, min(count, len(candidates))):
        w = words[i]
        j = rng.randrange(1, len(w) - 1)
        op = rng.choice(["swap", "drop", "double"])
        if op == "swap":
            w = w[:j] + w[j + 1] + w[j] + w[j + 2:]
        elif op == "drop":
            w = w[:j] + w[j + 1:]
        else:
            w = w[:j] + w[j] + w[j:]
        words[i] = w
    return " ".join(words)


def casualise(rng: random.Random, text: str) -> str:
    text = text.lower().replace("'", "")
    text = re.sub(r"[.!]+$", "", text)
    if rng.random() < 0.5:
        text = " ".join(ABBREVIATIONS.get(w, w) for w in text.split(" "))
    return text


def lead_into(lead: str, body: str) -> str:
    first = body.split(" ", 1)[0]
    if first not in KEEP_CAPITAL:
        body = body[0].lower() + body[1:]
    return lead + body


def compose(rng: random.Random, label: str) -> str:
    """Build one ticket for `label` by wrapping a filled template in a randomly chosen tone."""
    spec = LABELS[label]
    tone = rng.choices(list(TONE_WEIGHTS), weights=list(TONE_WEIGHTS.values()))[0]
    chosen: dict[str, str] = {}

    if tone == "terse":
        text = fill(rng, rng.choice(spec["short"]), chosen)
        text = text[0].upper() + text[1:] if rng.random() < 0.5 else text
        if rng.random() < 0.4:
            text = casualise(rng, text)
        if rng.random() < 0.15:
            text = add_typos(rng, text, 1)
        return text

    pool = spec["full"] + [t for group in TONE_GROUPS[tone] for t in spec.get(group, [])]
    body = fill(rng, rng.choice(pool), chosen)
    body = body[0].upper() + body[1:]
    greeting = signoff = ""
    parts: list[str] = []

    if tone == "polite" or (tone != "angry" and rng.random() < 0.3):
        greeting = rng.choice(GREETINGS) + rng.choice([" ", "\n", "\n\n"])
    if tone == "angry":
        parts.append(rng.choice(ANGRY_OPENERS))
    if tone == "rambling":
        for context in rng.sample(RAMBLE_CONTEXT, rng.choice([1, 2, 2, 3])):
            parts.append(fill(rng, context, chosen))
        if rng.random() < 0.5 and body.split(" ", 1)[0] not in NO_LEAD:
            body = lead_into(rng.choice(RAMBLE_LEADS), body)
    parts.append(body)

    n_extras = {"neutral": rng.choice([0, 0, 1]), "polite": rng.choice([0, 1]),
                "angry": rng.choice([0, 1]), "rambling": rng.choice([1, 2])}[tone]
    for extra in rng.sample(spec["extras"], n_extras):
        parts.append(fill(rng, extra, chosen))

    if tone == "angry":
        closer = rng.choice(ANGRY_CLOSERS)
        parts.append(closer.upper() if rng.random() < 0.3 else closer)
    if tone == "polite" or (tone != "angry" and rng.random() < 0.2):
        signoff = rng.choice([" ", "\n", "\n\n"]) + rng.choice(POLITE_SIGNOFFS)
        if signoff.endswith(",") or rng.random() < 0.3:
            signoff += "\n" + fill(rng, "{name}", chosen)

    text = greeting + " ".join(parts) + signoff
    if tone != "polite" and rng.random() < 0.06:
        text += rng.choice(SIGNATURE_TAILS)
    if rng.random() < 0.12:
        text = add_typos(rng, text, rng.choice([1, 1, 2, 3]))
    return text


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


def quotas(n: int) -> dict[str, int]:
    raw = {label: n * w for label, w in LABEL_WEIGHTS.items()}
    counts = {label: int(v) for label, v in raw.items()}
    by_remainder = sorted(raw, key=lambda label: (counts[label] - raw[label], label))
    for label in by_remainder[: n - sum(counts.values())]:
        counts[label] += 1
    return counts


def generate(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    seen: set[str] = set()
    tickets: list[tuple[str, str]] = []
    for label, count in quotas(n).items():
        made = attempts = 0
        while made < count:
            attempts += 1
            if attempts > count * 200:
                raise RuntimeError(f"could not generate {count} unique {label!r} tickets")
            text = compose(rng, label)
            key = normalise(text)
            if key in seen or not MIN_WORDS <= len(text.split()) <= MAX_WORDS:
                continue
            seen.add(key)
            tickets.append((text, label))
            made += 1
    rng.shuffle(tickets)
    return tickets


def to_record(text: str, label: str) -> dict:
    return {"messages": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": text},
        {"role": "assistant", "content": label},
    ]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=800, help="number of tickets (default 800)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("support_tickets.jsonl"),
                        help="output JSONL path (default: examples/support_tickets.jsonl)")
    args = parser.parse_args()

    tickets = generate(args.n, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8", newline="\n") as f:
        for text, label in tickets:
            f.write(json.dumps(to_record(text, label), ensure_ascii=False) + "\n")

    counts = Counter(label for _, label in tickets)
    print(f"wrote {len(tickets)} tickets to {args.out}")
    for label in LABEL_WEIGHTS:
        print(f"  {label:<16} {counts[label]:>4}  ({counts[label] / len(tickets):.1%})")


if __name__ == "__main__":
    main()
