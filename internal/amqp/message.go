package amqp

// Message is an AMQP message (part 3): the sections a DPS exchange, IoT
// Hub's device links and an Event Hubs endpoint use. Header, delivery
// annotations and footer are read past and never sent.
type Message struct {
	// MessageAnnotations are the message-annotations section, sent before
	// the properties when set (IoT Hub's twin links carry their operation,
	// resource and status in it; Event Hubs events their offset and
	// sequence number).
	MessageAnnotations map[Symbol]any
	Properties         Properties
	// ApplicationProperties maps string keys to simple values.
	ApplicationProperties map[string]any
	// Data holds the data sections' bytes, in order.
	Data [][]byte
	// Value is the amqp-value section, when HasValue.
	Value    any
	HasValue bool
}

// Properties is the properties section (part 3, 3.2.4). The ids are any
// of ulong, uuid, binary or string; they are echoed as they came.
type Properties struct {
	MessageID       any
	UserID          []byte
	To              string
	Subject         string
	ReplyTo         string
	CorrelationID   any
	ContentType     Symbol
	ContentEncoding Symbol
}

// Body returns the data sections joined, or the amqp-value when it is a
// string or binary (C# sends its polls as an amqp-value string).
func (m *Message) Body() []byte {
	switch {
	case len(m.Data) == 1:
		return m.Data[0]
	case len(m.Data) > 1:
		var b []byte
		for _, d := range m.Data {
			b = append(b, d...)
		}
		return b
	case m.HasValue:
		switch v := m.Value.(type) {
		case string:
			return []byte(v)
		case []byte:
			return v
		}
	}
	return nil
}

// UnmarshalMessage decodes the bare message of a delivery.
func UnmarshalMessage(b []byte) (*Message, error) {
	m := &Message{}
	for len(b) > 0 {
		v, rest, err := Unmarshal(b)
		if err != nil {
			return nil, err
		}
		b = rest
		code, ok := descriptorCode(v)
		if !ok {
			return nil, malformed("message section is a %T", v)
		}
		val := v.(Described).Value
		switch code {
		case descMessageAnnotations:
			mp, ok := val.(*Map)
			if !ok && val != nil {
				return nil, malformed("message-annotations is a %T", val)
			}
			if mp == nil {
				break
			}
			m.MessageAnnotations = make(map[Symbol]any, mp.Len())
			for _, pr := range mp.Pairs {
				switch k := pr.Key.(type) {
				case Symbol:
					m.MessageAnnotations[k] = pr.Value
				case string:
					m.MessageAnnotations[Symbol(k)] = pr.Value
				}
				// ulong keys are reserved: read past.
			}
		case descHeader, descDeliveryAnnotations, descFooter, descSequence:
			// Not used: accepted and ignored.
		case descProperties:
			f, err := fieldsOf(v, descProperties)
			if err != nil {
				return nil, err
			}
			p := &m.Properties
			p.MessageID = f.at(0)
			if uid, ok := f.at(1).([]byte); ok {
				p.UserID = uid
			}
			if p.To, err = addressField(f, 2); err != nil {
				return nil, err
			}
			if p.Subject, err = f.string(3); err != nil {
				return nil, err
			}
			if p.ReplyTo, err = addressField(f, 4); err != nil {
				return nil, err
			}
			p.CorrelationID = f.at(5)
			if p.ContentType, err = f.symbol(6); err != nil {
				return nil, err
			}
			// Read leniently: a field nothing here relies on must not
			// make a message undecodable.
			switch ce := f.at(7).(type) {
			case Symbol:
				p.ContentEncoding = ce
			case string:
				p.ContentEncoding = Symbol(ce)
			}
		case descApplicationProperties:
			mp, ok := val.(*Map)
			if !ok && val != nil {
				return nil, malformed("application-properties is a %T", val)
			}
			if mp == nil {
				break // a null section: no properties
			}
			m.ApplicationProperties = make(map[string]any, mp.Len())
			for _, pr := range mp.Pairs {
				k, ok := pr.Key.(string)
				if !ok {
					return nil, malformed("application-properties key is a %T", pr.Key)
				}
				m.ApplicationProperties[k] = pr.Value
			}
		case descData:
			d, ok := val.([]byte)
			if !ok {
				return nil, malformed("data section is a %T", val)
			}
			m.Data = append(m.Data, d)
		case descValue:
			m.Value, m.HasValue = val, true
		default:
			return nil, malformed("unknown message section 0x%02x", code)
		}
	}
	return m, nil
}

func addressField(f fields, i int) (string, error) {
	switch v := f.at(i).(type) {
	case nil:
		return "", nil
	case string:
		return v, nil
	case Symbol:
		return string(v), nil
	}
	return "", fieldErr(i, "address", f.at(i))
}

// MarshalMessage encodes m: message annotations, properties, application-properties, then the
// data sections (or the amqp-value).
func MarshalMessage(m *Message) ([]byte, error) {
	var b []byte
	var err error
	if len(m.MessageAnnotations) > 0 {
		if b, err = Marshal(b, Described{uint64(descMessageAnnotations), m.MessageAnnotations}); err != nil {
			return nil, err
		}
	}
	p := m.Properties
	var uid any
	if len(p.UserID) > 0 {
		uid = p.UserID
	}
	props := trim([]any{p.MessageID, uid, nilIfEmpty(p.To), nilIfEmpty(p.Subject), nilIfEmpty(p.ReplyTo),
		p.CorrelationID, symbolOrNil(p.ContentType), symbolOrNil(p.ContentEncoding)})
	if len(props) > 0 {
		if b, err = Marshal(b, Described{uint64(descProperties), props}); err != nil {
			return nil, err
		}
	}
	if len(m.ApplicationProperties) > 0 {
		if b, err = Marshal(b, Described{uint64(descApplicationProperties), m.ApplicationProperties}); err != nil {
			return nil, err
		}
	}
	for _, d := range m.Data {
		if b, err = Marshal(b, Described{uint64(descData), d}); err != nil {
			return nil, err
		}
	}
	if m.HasValue {
		if b, err = Marshal(b, Described{uint64(descValue), m.Value}); err != nil {
			return nil, err
		}
	}
	return b, nil
}

func symbolOrNil(s Symbol) any {
	if s == "" {
		return nil
	}
	return s
}
